"""A griffe extension (mkdocs.yml, mkdocstrings' ``extensions``) that reads the implicit namespace subpackages of
``diffusers_brics`` (folders of modules without an ``__init__.py``, such as ``training/``), which griffe's finder does
not descend into, so that the API reference can document their modules."""

from __future__ import annotations

from pathlib import Path

import griffe


class NamespaceSubpackages(griffe.Extension):
    """After a package is loaded, add each of its folders that holds modules but no ``__init__.py`` as a module."""

    def on_package(self, *, pkg: griffe.Module, loader: griffe.GriffeLoader, **kwargs) -> None:
        root = pkg.filepath
        if not isinstance(root, Path) or root.name != "__init__.py":
            return
        for folder in sorted(path for path in root.parent.iterdir() if path.is_dir()):
            if (folder / "__init__.py").exists() or not any(folder.glob("*.py")) or folder.name in pkg.members:
                continue
            namespace = griffe.Module(folder.name, filepath=[folder], parent=pkg)
            pkg.set_member(folder.name, namespace)
            for source in sorted(folder.glob("*.py")):
                module = griffe.visit(
                    source.stem,
                    filepath=source,
                    code=source.read_text(),
                    parent=namespace,
                    docstring_parser=loader.docstring_parser,
                    docstring_options=loader.docstring_options,
                )
                namespace.set_member(source.stem, module)
