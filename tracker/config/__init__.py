"""The config file: its schema (:mod:`~tracker.config.schema`) and its loading
(:mod:`~tracker.config.loading`: the cattrs converter :mod:`~tracker.config.converter` with a
check per field, single-value checks :mod:`~tracker.config.values` and
:mod:`~tracker.config.rankvalues`, paths and secret files :mod:`~tracker.config.files`, checks
across a section's fields and across the file :mod:`~tracker.config.sections`, warnings
:mod:`~tracker.config.warnings`, with :mod:`~tracker.config.yamlfile`,
:mod:`~tracker.config.problems`, :mod:`~tracker.config.overrides` and the target files of
``file_targets`` :mod:`~tracker.config.targetfile`).

May import: :mod:`tracker.core`, :mod:`tracker.errors` and third-party libraries (the
import-linter contract in pyproject.toml checks it). Like the core, synchronous: no trio, no
sockets. A config error names its key path.
"""
