"""Shim scanned by nnU-Net through ``nnUNet_extTrainer``: it re-exports the package's trainer classes.

nnU-Net imports every module of the folders listed in ``nnUNet_extTrainer`` and drops them from
``sys.modules`` afterwards; the classes it finds here are those of ``nnunet_pdddpm.trainers``, so
``isinstance`` and pickling see one class identity. Keep this folder free of other modules.

nnU-Net looks a class up with ``hasattr``/``getattr`` on this module
(``nnunetv2.utilities.find_class_by_name``), so module attributes are all it needs: they are copied from
``nnunet_pdddpm.trainers.TRAINER_NAMES``, the one list of trainer names (``tests/test_discovery.py`` checks that
nnU-Net's lookup finds every one of them).
"""
import nnunet_pdddpm.trainers as _trainers

globals().update({name: getattr(_trainers, name) for name in _trainers.TRAINER_NAMES})
__all__ = list(_trainers.TRAINER_NAMES)
