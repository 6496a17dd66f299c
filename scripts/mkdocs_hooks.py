"""MkDocs hooks (``hooks:`` in mkdocs.yml): publish the repository files that the pages of ``docs/`` link to
outside ``docs/``, so that one link works both on GitHub and on the built site.

A page of ``docs/`` links to ``../benchmarks/results/NAME/report.md`` (a relative link GitHub follows); this hook adds
those files (the benchmark reports and their plots, ``DEVELOPERS.md``, the model cards, the Space's README) to the
site at their repository paths and rewrites ``../`` links of top-level pages to point at them.
"""

from __future__ import annotations

import re
from pathlib import Path

from mkdocs.structure.files import File, Files

# repository files published beside the pages, as globs relative to the repository root
PUBLISHED = (
    "DEVELOPERS.md",
    "model_cards/*.md",
    "space/README.md",
    "benchmarks/results/**/*.md",
    "benchmarks/results/**/*.png",
)
# run folders of the benchmarks (checkpoints, logs) are not part of the reports
EXCLUDED_PARTS = {"run", "runs"}
# a relative link of a top-level page to a file outside docs/: [text](../path) or [text](../path#anchor)
LINK = re.compile(r"\[([^\]]*)\]\(\.\./([^)#\s]+)(#[^)\s]*)?\)")


def published_paths(root: Path) -> list[str]:
    """The repository-relative paths under ``root`` that `PUBLISHED` names, runs excluded, sorted."""
    paths = set()
    for pattern in PUBLISHED:
        for path in root.glob(pattern):
            relative = path.relative_to(root)
            if path.is_file() and not EXCLUDED_PARTS & set(relative.parts[:-1]):
                paths.add(relative.as_posix())
    return sorted(paths)


def on_files(files: Files, config) -> Files:
    """Add the `PUBLISHED` files to the site, each at its repository path."""
    root = Path(config.config_file_path).resolve().parent
    for path in published_paths(root):
        files.append(
            File(path, src_dir=str(root), dest_dir=config.site_dir, use_directory_urls=config.use_directory_urls)
        )
    return files


def on_page_markdown(markdown: str, page, config, files) -> str:
    """In a top-level page of docs/, a link to ``../PATH`` becomes a link to ``PATH`` where the site publishes that file
    (`PUBLISHED`, beside the pages), and its text followed by the path in code where it does not (a source folder or
    script: GitHub shows those, the site has no copy)."""
    if "/" in page.file.src_uri:
        return markdown
    if Path(page.file.src_dir).resolve() != Path(config.docs_dir).resolve():
        # a published repository file at the top (DEVELOPERS.md): its links into docs/ are the pages beside it
        return markdown.replace("](docs/", "](")
    published = {file.src_uri for file in files}

    def relink(match: re.Match) -> str:
        text, path, anchor = match.group(1), match.group(2), match.group(3) or ""
        if path in published:
            return f"[{text}]({path}{anchor})"
        if text.strip("`").rstrip("/") == path.rstrip("/"):
            return text
        return f"{text} (`{path}`)"

    return LINK.sub(relink, markdown)
