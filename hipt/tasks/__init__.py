"""Slide-level tasks: TCGA task tables and split files, generic task loading, results tables.

- :mod:`hipt.tasks.tcga`: the paper's TCGA tasks (:data:`TASKS`), :func:`load_task` for them and for
  your own tables;
- :mod:`hipt.tasks.splits`: the split-file format, filtering, the 25% subsample, :func:`make_splits`;
- :mod:`hipt.tasks.tables`: per-fold result records and the assembled Table 1 / Table 2;
- :mod:`hipt.tasks.datasets`, :mod:`hipt.tasks.train`: feature bags and the training loop.
"""

from __future__ import annotations

from hipt.tasks.splits import (  # noqa: F401
    Split,
    filter_split,
    make_splits,
    read_split_file,
    read_splits,
    subsample_train,
    write_split_file,
)
from hipt.tasks.tcga import TASKS, TaskData, TaskSpec, fetch_task_files, get_task, load_task, read_table  # noqa: F401
