"""The book's pipeline, above the library: what the chapters run, not what a user of ``hipt`` needs.

- :mod:`hipt.book.zoo`        the presets (``cpu``, ``gpu``, ``paper``), :func:`~hipt.book.zoo.chapter_run`,
  and the train-or-load cache: phantom cohorts at the book's sizes, their patches, the DINO-pretrained
  models (:func:`~hipt.book.zoo.pretrained`) and their features
- :mod:`hipt.book.tasks`      a phantom cohort as a slide-level task (:func:`~hipt.book.tasks.phantom_task`)
- :mod:`hipt.book.evidence`   the chapters' claims as effects measured per seed, and findings that follow them
- :mod:`hipt.book.reproduce`  ``hipt reproduce``: the chapters rerun with papermill, the results tables

The library (slides and tiling, models, pretraining, features, slide-level tasks, attention maps,
metrics, the phantom generator) never imports this package: it takes its data and settings explicitly.
"""
