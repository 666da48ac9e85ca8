"""Folder scanned by nnU-Net through nnUNet_extTrainer (see discovery.py)."""
