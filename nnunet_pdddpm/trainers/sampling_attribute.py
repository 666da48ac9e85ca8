"""A trainer's ``sampling``: its sampling defaults as one :class:`SamplingSettings`, at class and instance level.

The final validation samples with it and the checkpoint stores it (``SamplingSettings.stored``) as
``nnunet_pdddpm_predict``'s defaults. Each stored field is also a class attribute of the same name (``t_prime``,
``steps``, ...): that is how a mixin such as ``RefinerRecipe`` changes one field and leaves the others to the class
it is mixed into, so the fields are the one source and ``sampling`` is read from them, never a second copy that
could disagree. ``sampling = SamplingSettings(...)`` (or ``dataclasses.replace(Parent.sampling, t_prime=100)``) in a
trainer's class body, or ``self.sampling = ...`` on an instance, sets every stored field at once.
"""
from __future__ import annotations

import dataclasses

from nnunet_pdddpm.errors import PDDDPMUserError
from nnunet_pdddpm.inference.settings import STORED_FIELDS, SamplingSettings


class SamplingAttribute:
    """The data descriptor behind ``sampling``: reads the stored fields of the class (or instance) as one value;
    assigning a value on an instance sets each field."""

    def __get__(self, instance, owner) -> SamplingSettings:
        source = owner if instance is None else instance
        values = {f: getattr(source, f) for f in STORED_FIELDS}
        weight = values["pre_segmentation_weight"]
        if isinstance(weight, int) and not isinstance(weight, bool):  # a class body's 0 is stored as 0.0
            values["pre_segmentation_weight"] = float(weight)
        return SamplingSettings(**values)

    def __set__(self, instance, value: SamplingSettings) -> None:
        for name, field_value in _stored_values(type(instance).__name__, value).items():
            setattr(instance, name, field_value)


def apply_class_body_sampling(cls: type) -> None:
    """A ``sampling = SamplingSettings(...)`` in ``cls``'s own body becomes its fields (the descriptor is inherited
    again); one sentence for a value that is not settings, for fields set beside it, and for a ``sampling`` value
    in a mixin, where it would hide the fields of every class after it."""
    value = cls.__dict__.get("sampling")
    if value is not None and not isinstance(value, SamplingAttribute):
        beside = [f for f in STORED_FIELDS if f in cls.__dict__]
        if beside:
            raise PDDDPMUserError(f"{cls.__name__} sets both sampling and {beside[0]}, which is a field of sampling: "
                                  f"set it inside sampling (dataclasses.replace(..., {beside[0]}=...)).")
        values = _stored_values(cls.__name__, value)
        delattr(cls, "sampling")
        for name, field_value in values.items():
            setattr(cls, name, field_value)
    owner = next(c for c in cls.__mro__ if "sampling" in c.__dict__)
    if not isinstance(owner.__dict__["sampling"], SamplingAttribute):
        raise PDDDPMUserError(f"{owner.__name__} (a base of {cls.__name__}) sets sampling but is not a PD-DDPM "
                              f"trainer, so it would hide the sampling fields of the classes after it; set the fields "
                              f"it changes (t_prime, steps, ...) as class attributes instead.")


def _stored_values(class_name: str, value) -> dict:
    """The stored fields of ``value``; refused: a value that is not :class:`SamplingSettings`, and fields that a
    checkpoint does not store (the final validation would use them, ``nnunet_pdddpm_predict`` would not)."""
    if not isinstance(value, SamplingSettings):
        raise PDDDPMUserError(f"{class_name}.sampling must be a SamplingSettings, got {type(value).__name__}.")
    unstored = [f.name for f in dataclasses.fields(SamplingSettings)
                if f.name not in STORED_FIELDS and getattr(value, f.name) != f.default]
    if unstored:
        raise PDDDPMUserError(f"{class_name}.sampling sets {unstored[0]}, which a checkpoint does not keep (prediction "
                              f"would not use it); leave it at its default and pass it to nnunet_pdddpm_predict.")
    return {f: getattr(value, f) for f in STORED_FIELDS}
