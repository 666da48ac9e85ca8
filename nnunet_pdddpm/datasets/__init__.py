"""Converters from public datasets' own layouts to nnU-Net v2 raw datasets."""
from nnunet_pdddpm.datasets.paper_split import PaperSplit, check_split_target, paper_split, write_paper_split
from nnunet_pdddpm.datasets.raw_folder import dataset_target, env_folder
from nnunet_pdddpm.datasets.wmh2017 import WMHCase, convert_wmh2017, find_wmh_cases

__all__ = [
    "PaperSplit",
    "WMHCase",
    "check_split_target",
    "convert_wmh2017",
    "dataset_target",
    "env_folder",
    "find_wmh_cases",
    "paper_split",
    "write_paper_split",
]
