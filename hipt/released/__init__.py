"""The reference's released TCGA and patch embeddings: registry, verified download, and the tables they give.

- :mod:`hipt.released.registry`: every released file (path, size, sha256, URL), from package data;
- :mod:`hipt.released.fetch`: parallel, resumable, verified downloads into a local root;
- :mod:`hipt.released.patch`: the reference's patch-level tables (CRC-100K, BCSS, BreastPathQ);
- :mod:`hipt.released.slide`: KNN, Table 1 (HIPT-GP, MIL) and survival on the released slide embeddings;
- :mod:`hipt.released.cli`: ``hipt released {fetch,knn,patch,table1,survival}``.

These embeddings were computed by the reference's authors with its released checkpoints at 0.5 µm/px,
not by this package.
"""
