"""The transfer study: the paper's 170 nets as cells of a grid, run as Caffe runs, summarised as its figures.

``grid`` (every net as a :class:`Cell`, realised from a base net), ``splits`` (the paper's datasets from a file
list), ``cells`` (a cell as a run: data, mean, base weights, the call into training), ``scheduler`` /
``ray_grid`` (a subset of the grid in dependency order), ``results`` / ``figures`` (the paper's metric,
Figures 2 and 3, Table 1).
"""
from .cells import Study, builtin_study, paper_study, run_cell
from .grid import Cell, all_cells, cell_from_name

__all__ = ["Study", "Cell", "all_cells", "cell_from_name", "builtin_study", "paper_study", "run_cell"]
