"""A WMH-like demo dataset in nnU-Net v2 raw format, generated offline from nilearn's MNI152 template."""
from nnunet_pdddpm.demo.dataset import PROFILES, DemoProfile, make_demo_dataset

__all__ = ["PROFILES", "DemoProfile", "make_demo_dataset"]
