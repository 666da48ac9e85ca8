"""The paper's experiments on any nnU-Net dataset with a trained denoiser and pre-segmenter.

``table1`` (pre-segmenter vs vanilla DDPM vs PD-DDPM), ``tprime`` (Dice and uncertainty vs T'),
``ensemble`` (Dice mean and spread vs ensemble size) and ``preseg_quality`` (PD-DDPM from
worse pre-segmentations). Each module has a ``run(runner, output, ...)`` that writes
``<name>.csv``, ``<name>.json`` and ``<name>.png`` into ``output``; :mod:`.runner` holds what
they share. Command line: ``nnunet_pdddpm_experiment``.
"""
