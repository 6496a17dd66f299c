"""The shared training loop with a stand-in stage: non-finite steps are dropped, counted and, in a row, fatal; a
stop signal ends a step with a checkpoint; resumed runs end as uninterrupted ones; processes agree."""

import json
import signal

import pytest
import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from safetensors.torch import load_file

from diffusers_brics.training.config import EMAConfig, LoopConfig
from diffusers_brics.training.loop import StageParts, Trainer, TrainingStage, TrainingStopped


class Line(ModelMixin, ConfigMixin):
    @register_to_config
    def __init__(self, width: int = 4):
        super().__init__()
        self.linear = torch.nn.Linear(width, 1)

    def forward(self, x):
        return self.linear(x)


class PoisonedStage(TrainingStage):
    """Regression on random data; the steps in ``poisoned`` get a NaN loss (and so NaN gradients)."""

    def __init__(self, poisoned: set[int]):
        self.poisoned = poisoned
        self.weights_before, self.ema_steps = {}, {}

    def weights_after(self, trainer, step: int) -> torch.Tensor:
        """The weights after optimisation step ``step`` (the Trainer applies a step after `training_step` returns):
        those the next step started from, or the final ones."""
        return self.weights_before[step + 1] if step + 1 in self.weights_before else self.final_weights

    def finish(self, trainer, model, step, summary):
        self.final_weights = trainer.unwrap().linear.weight.detach().clone()

    def setup(self, trainer):
        data = torch.utils.data.TensorDataset(torch.randn(64, 4))
        loader = torch.utils.data.DataLoader(data, batch_size=8, drop_last=True,
                                             collate_fn=lambda rows: torch.stack([row[0] for row in rows]))
        model = Line()
        return StageParts("line", model, torch.optim.SGD(model.parameters(), lr=0.1), loader)

    def training_step(self, trainer, batch, generator, step):
        self.ema_steps.setdefault(step, trainer.ema.optimization_step)
        self.weights_before.setdefault(step, trainer.unwrap().linear.weight.detach().clone())
        loss = trainer.model(batch).square().mean()
        if step in self.poisoned:
            loss = loss * float("nan")
        trainer.apply_gradients(loss, trainer.optimizer, trainer.model.parameters(), lr_scheduler=trainer.lr_scheduler)
        return {"loss": loss.item()}


def loop_config(tmp_path, **overrides) -> LoopConfig:
    settings = dict(output_dir=str(tmp_path), train_batch_size=8, max_train_steps=8, checkpointing_steps=2,
                    validation_steps=1000, report_to="none", max_nonfinite_steps=3, ema=EMAConfig(ema_max_decay=0.9))
    return LoopConfig(**{**settings, **overrides})


def test_a_non_finite_step_is_dropped_counted_and_kept_out_of_the_ema(tmp_path):
    stage = PoisonedStage({2, 5})
    trainer = Trainer(loop_config(tmp_path), "test")
    trainer.fit(stage)
    for step in range(8):
        moved = not torch.equal(stage.weights_before[step], stage.weights_after(trainer, step))
        assert moved == (step not in {2, 5}), step
        assert torch.isfinite(stage.weights_after(trainer, step)).all()
    # the EMA skipped the dropped steps: after step k it has seen k + 1 minus the dropped steps before
    assert [stage.ema_steps[k] for k in range(8)] == [0, 1, 2, 2, 3, 4, 4, 5]
    assert trainer.nonfinite_steps == 2


def test_non_finite_steps_in_a_row_stop_training_with_the_last_checkpoint_intact(tmp_path):
    stage = PoisonedStage({3, 4, 5, 6})
    trainer = Trainer(loop_config(tmp_path), "test")
    with pytest.raises(TrainingStopped, match="3 steps in a row had a non-finite loss.*last checkpoint .* is intact"):
        trainer.fit(stage)
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    saved = load_file(tmp_path / "checkpoint-4" / "line" / "diffusion_pytorch_model.safetensors")
    assert torch.equal(saved["linear.weight"], stage.weights_after(trainer, 2))  # the last applied step
    assert torch.isfinite(saved["linear.weight"]).all()


def test_gradient_accumulation_drops_the_whole_step(tmp_path):
    stage = PoisonedStage({1})
    trainer = Trainer(loop_config(tmp_path, gradient_accumulation_steps=2, max_train_steps=3), "test")
    trainer.fit(stage)
    # step 1 has two micro-batches, both poisoned (steps are numbered per optimisation step): nothing moves
    assert torch.equal(stage.weights_before[1], stage.weights_after(trainer, 1))
    assert not torch.equal(stage.weights_before[2], stage.weights_after(trainer, 2)) and trainer.nonfinite_steps == 1


class TwoOptimizerStage(PoisonedStage):
    """The regression plus a critic with an optimizer of its own, kept out of accelerate (as stage 1's discriminator
    is) and updated after the model in the same step; only the critic's loss is poisoned, at the steps in
    ``poisoned``."""

    def setup(self, trainer):
        parts = super().setup(trainer)
        self.critic = torch.nn.Linear(4, 1)
        self.critic_optimizer = torch.optim.SGD(self.critic.parameters(), lr=0.1)
        self.critic_before, self.logs = {}, {}
        return parts

    def training_step(self, trainer, batch, generator, step):
        self.ema_steps.setdefault(step, trainer.ema.optimization_step)
        self.weights_before.setdefault(step, trainer.unwrap().linear.weight.detach().clone())
        self.critic_before.setdefault(step, self.critic.weight.detach().clone())
        loss = trainer.model(batch).square().mean()
        trainer.apply_gradients(loss, trainer.optimizer, trainer.model.parameters(), lr_scheduler=trainer.lr_scheduler)
        critic_loss = self.critic(batch).square().mean()
        if step in self.poisoned:
            critic_loss = critic_loss * float("nan")
        trainer.apply_gradients(critic_loss, self.critic_optimizer, self.critic.parameters(), prepared=False)
        return {"loss": loss.item(), "critic_loss": critic_loss.item()}


def test_a_step_is_applied_whole_or_not_at_all(tmp_path, caplog):
    """The model's gradients are finite at step 2; the critic's, computed after them, are not: neither optimizer
    steps, the EMA skips the step, and the log says nothing was applied."""
    stage = TwoOptimizerStage({2})
    trainer = Trainer(loop_config(tmp_path), "test")
    with caplog.at_level("WARNING"):
        trainer.fit(stage)
    critic_after = {k: stage.critic_before[k + 1] if k < 7 else stage.critic.weight.detach() for k in range(8)}
    for step in range(8):
        model_moved = not torch.equal(stage.weights_before[step], stage.weights_after(trainer, step))
        critic_moved = not torch.equal(stage.critic_before[step], critic_after[step])
        assert model_moved == critic_moved == (step != 2), step
    assert torch.isfinite(stage.critic.weight).all()
    assert [stage.ema_steps[k] for k in range(8)] == [0, 1, 2, 2, 3, 4, 5, 6]
    assert trainer.nonfinite_steps == 1
    assert "step 3: non-finite loss or gradients, nothing applied" in caplog.text


class ValidatedStage(PoisonedStage):
    """A clean regression whose validation reports the step it saw and takes a measurable time."""

    def __init__(self):
        super().__init__(set())

    def validate(self, trainer, model, step):
        import time

        time.sleep(0.3)  # left out of the training seconds
        return {"seen_step": float(step)}

    def finish(self, trainer, model, step, summary):
        super().finish(trainer, model, step, summary)
        self.summary = summary


def test_validations_are_recorded_with_their_step_and_training_seconds(tmp_path):
    import json

    trainer = Trainer(loop_config(tmp_path, validation_steps=3, max_train_steps=7), "test")
    stage = ValidatedStage()
    trainer.fit(stage)
    lines = (tmp_path / "validation_history.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["step"] for r in records] == [3, 6] and [r["seen_step"] for r in records] == [3.0, 6.0]
    seconds = [r["train_seconds"] for r in records]
    assert 0 < seconds[0] <= seconds[1] < 0.3  # the first validation's 0.3 s sleep is not counted in the second
    assert stage.summary["train_seconds"] < 0.3  # the run's own training time leaves the validations out too


# ---------------------------------------------------------------------------------------------- stops and resumes
# In-process counterparts of the scripts' subprocess runs (test_interruptions.py, the two-process runs of
# test_train_ae.py and test_train_diffusion.py, marked slow): the same Trainer code on a stand-in stage.
class CleanStage(PoisonedStage):
    """The regression without poisoned steps on ``rows`` random rows (batches of ``batch_size``, reshuffled each
    epoch); sends its own process ``signum`` during step ``signal_at``, or raises `Crash` there (a kill, as far as
    the run's files know)."""

    def __init__(self, rows: int = 64, signum: int | None = None, signal_at: int | None = None,
                 crash_at: int | None = None, batch_size: int = 8):
        super().__init__(set())
        self.rows, self.signum, self.signal_at, self.crash_at = rows, signum, signal_at, crash_at
        self.batch_size = batch_size
        self.batches: list[torch.Tensor] = []

    def setup(self, trainer):
        self.handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGINT)}
        data = torch.utils.data.TensorDataset(torch.randn(self.rows, 4))
        loader = torch.utils.data.DataLoader(data, batch_size=self.batch_size, shuffle=True, drop_last=True,
                                             collate_fn=lambda rows: torch.stack([row[0] for row in rows]))
        model = Line()
        return StageParts("line", model, torch.optim.SGD(model.parameters(), lr=0.1), loader)

    def finish(self, trainer, model, step, summary):
        super().finish(trainer, model, step, summary)
        self.saved_model = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def training_step(self, trainer, batch, generator, step):
        if step == self.crash_at:
            raise Crash
        self.batches.append(batch.clone())
        logs = super().training_step(trainer, batch, generator, step)
        if step == self.signal_at:
            self.send(self.signum)
        return logs

    def send(self, signum: int) -> None:
        """``signum`` to this process, once the Trainer has its own handler for it (never the default's)."""
        assert signal.getsignal(signum) is not self.handlers[signum], "the Trainer's handler is not installed"
        signal.raise_signal(signum)


class Crash(Exception):
    """The stand-in stage's sudden end."""


def fit(config: LoopConfig, stage: TrainingStage) -> Trainer:
    """A fresh accelerator state (each script run starts with one), then the run."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    trainer = Trainer(config, "test")
    trainer.fit(stage)
    return trainer


def saved(folder, step: int) -> dict:
    """The model and EMA weights of ``checkpoint-<step>``."""
    return {name: load_file(folder / f"checkpoint-{step}" / name / "diffusion_pytorch_model.safetensors")
            for name in ("line", "line_ema")}


def assert_identical_states(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        for key in a[name]:
            torch.testing.assert_close(a[name][key], b[name][key], rtol=0, atol=0, msg=f"{name}: {key}")


def checkpoint_steps(folder) -> list[int]:
    return sorted(int(p.name.split("-")[1]) for p in folder.glob("checkpoint-*") if not p.name.endswith(".partial"))


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["term", "int"])
def test_a_stop_signal_ends_the_step_with_a_checkpoint_and_the_resumed_run_ends_as_an_uninterrupted_one(
        tmp_path, signum, caplog):
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    fit(loop_config(straight, checkpointing_steps=3), CleanStage())
    previous = signal.getsignal(signum)
    with caplog.at_level("INFO"), pytest.raises(SystemExit) as ended:
        fit(loop_config(stopped, checkpointing_steps=3), CleanStage(signum=signum, signal_at=3))
    assert ended.value.code == 128 + signum
    # the signal came during the 4th step: it ends with a checkpoint of its own, off the cadence of 3
    assert checkpoint_steps(stopped) == [3, 4]
    name = signal.Signals(signum).name
    assert f"{name}: stopped at step 4 with checkpoint-4 written" in caplog.text
    assert signal.getsignal(signum) is previous  # the handler is the test's again
    with caplog.at_level("INFO"):
        fit(loop_config(stopped, checkpointing_steps=3, resume_from_checkpoint="latest"), CleanStage())
    assert "at step 4" in caplog.text and checkpoint_steps(stopped) == [3, 4, 6, 8]
    assert_identical_states(saved(stopped, 8), saved(straight, 8))


def test_a_second_stop_signal_leaves_at_once(tmp_path):
    class TwoSignals(CleanStage):
        def training_step(self, trainer, batch, generator, step):
            logs = super().training_step(trainer, batch, generator, step)
            if step == 2:
                self.send(signal.SIGTERM)
                self.send(signal.SIGTERM)
            return logs

    previous = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt):
        fit(loop_config(tmp_path, checkpointing_steps=100), TwoSignals())
    assert checkpoint_steps(tmp_path) == []  # no checkpoint: the run left in the middle of its step
    assert signal.getsignal(signal.SIGTERM) is previous  # the handler is the test's again


def test_a_run_ended_without_warning_resumes_from_its_last_whole_checkpoint(tmp_path, caplog):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    fit(loop_config(straight, checkpointing_steps=2), CleanStage())
    with pytest.raises(Crash):
        fit(loop_config(killed, checkpointing_steps=2), CleanStage(crash_at=5))
    assert checkpoint_steps(killed) == [2, 4]
    (killed / "checkpoint-6.partial").mkdir()  # as if it had ended while saving the next checkpoint
    resumed = CleanStage()
    with caplog.at_level("INFO"):
        fit(loop_config(killed, checkpointing_steps=2, resume_from_checkpoint="latest"), resumed)
    assert "at step 4" in caplog.text
    assert checkpoint_steps(killed) == [2, 4, 6, 8]
    assert_identical_states(saved(killed, 8), saved(straight, 8))
    # a checkpoint holds the model and its EMA in diffusers' format (with the EMA's step), not the model twice
    assert not list((killed / "checkpoint-8").glob("model*.safetensors"))
    assert json.loads((killed / "checkpoint-8" / "line_ema" / "ema_state.json").read_text())["optimization_step"] == 8
    # the stage finishes with the last EMA weights
    ema = saved(killed, 8)["line_ema"]
    assert resumed.saved_model.keys() == ema.keys()
    assert all(torch.equal(resumed.saved_model[k], ema[k]) for k in ema)


def test_a_run_resumed_within_an_epoch_skips_the_batches_the_epoch_has_used(tmp_path):
    """16 rows in batches of 8: an epoch is 2 steps, each in its own order. Resumed at step 3, the run skips the
    batch of epoch 2 that it has already trained on, and ends with the uninterrupted run's weights (the two-process
    runs check the same with the batches sharded over the processes)."""
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    everything = CleanStage(rows=16)
    fit(loop_config(straight, max_train_steps=None, num_epochs=3, checkpointing_steps=3), everything)
    assert len(everything.batches) == 6
    assert not torch.equal(everything.batches[0], everything.batches[2])  # reshuffled for the second epoch
    first = CleanStage(rows=16)
    fit(loop_config(resumed, max_train_steps=3, checkpointing_steps=3), first)
    rest = CleanStage(rows=16)
    fit(loop_config(resumed, max_train_steps=None, num_epochs=3, checkpointing_steps=3,
                    resume_from_checkpoint="latest"), rest)
    assert len(rest.batches) == 3
    for a, b in zip(first.batches + rest.batches, everything.batches):
        assert torch.equal(a, b)
    assert_identical_states(saved(resumed, 6), saved(straight, 6))


def test_gradients_are_averaged_and_weights_checked_across_processes(monkeypatch, caplog):
    """What data-parallel processes exchange, with a stand-in for accelerate's collectives on two processes."""
    from types import SimpleNamespace

    from accelerate import PartialState

    from diffusers_brics.training import distributed

    PartialState()  # accelerate's logger needs a state
    model = torch.nn.Linear(4, 1)
    model(torch.ones(2, 4)).sum().backward()
    mine = [p.grad.clone() for p in model.parameters()]
    theirs = [torch.full_like(g, 3.0) for g in mine]
    flat_theirs = torch.cat([g.flatten() for g in theirs])
    two = SimpleNamespace(num_processes=2,
                          reduce=lambda t, reduction: (t + flat_theirs) / 2 if reduction == "mean" else None)
    distributed.average_gradients(two, model.parameters())
    for parameter, a, b in zip(model.parameters(), mine, theirs):
        torch.testing.assert_close(parameter.grad, (a + b) / 2)
    distributed.average_gradients(SimpleNamespace(num_processes=1), model.parameters())  # one process: as it is
    torch.testing.assert_close(next(model.parameters()).grad, (mine[0] + theirs[0]) / 2)

    rank0 = [torch.full_like(p, 0.5) for p in model.parameters()]
    received = iter(rank0)
    monkeypatch.setattr(distributed, "broadcast", lambda tensor, from_process: next(received))
    distributed.broadcast_parameters(model)
    assert all(torch.equal(p, r) for p, r in zip(model.parameters(), rank0))

    monkeypatch.setattr(distributed, "plain_module", lambda accelerator, module: module)
    monkeypatch.setattr(distributed, "gather_object", lambda objects: objects * 2)
    with caplog.at_level("INFO"):
        distributed.check_in_sync(two, model)
    assert "weights identical on 2 process(es)" in caplog.text
    monkeypatch.setattr(distributed, "gather_object", lambda objects: objects + ["0" * 64])
    with pytest.raises(RuntimeError, match="weights differ across processes"):
        distributed.check_in_sync(two, model)


def test_resuming_from_a_damaged_checkpoint_names_the_file(tmp_path):
    fit(loop_config(tmp_path, max_train_steps=2, checkpointing_steps=2), CleanStage())
    open(tmp_path / "checkpoint-2" / "optimizer.bin", "r+b").truncate(100)
    with pytest.raises(ValueError, match=r"--resume_from_checkpoint: .*checkpoint-2/optimizer.bin is damaged"):
        fit(loop_config(tmp_path, max_train_steps=4, checkpointing_steps=2, resume_from_checkpoint="latest"),
            CleanStage())


def test_micro_batches_accumulate_to_the_step_of_the_larger_batch(tmp_path):
    """2 micro-batches of 4 make the steps one batch of 8 makes (plain SGD: a micro-batch's loss scaled by 1/2, one
    optimizer step per step, not per micro-batch, or the weights would differ)."""
    runs = {"8": (8, 1), "4x2": (4, 2), "4": (4, 1)}
    for name, (batch, accumulation) in runs.items():
        fit(loop_config(tmp_path / name, train_batch_size=batch, gradient_accumulation_steps=accumulation,
                        max_train_steps=3, checkpointing_steps=3), CleanStage(batch_size=batch))
    big, accumulated, small = (saved(tmp_path / name, 3)["line"] for name in runs)
    for key in big:
        torch.testing.assert_close(accumulated[key], big[key], rtol=1e-5, atol=1e-6)
    assert not all(torch.allclose(small[key], big[key], rtol=1e-3, atol=1e-4) for key in big)  # it does differ
