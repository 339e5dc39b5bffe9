"""MkDocs hooks (mkdocs.yml `hooks:`): the API reference is generated before every build.

docs/api/reference.md is not committed: it is written from the .proto comments
(scripts/gen_api_docs.py) each time the site is built, so it cannot drift from
the contract.
"""

from __future__ import annotations

import sys
from pathlib import Path

from mkdocs.config.defaults import MkDocsConfig

sys.path.insert(0, str(Path(__file__).resolve().parent))  # mkdocs loads hooks by path, not as a package

import gen_api_docs


def on_pre_build(config: MkDocsConfig) -> None:
    gen_api_docs.generate(Path(config.docs_dir) / "api" / "reference.md")
