"""The shared training loop with a stand-in stage: non-finite steps are dropped, counted and, in a row, fatal."""

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
