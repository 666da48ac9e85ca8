"""Console scripts: each module only parses, checks and calls the package."""

#: ``--trust_checkpoints`` of every command that loads a pre-segmenter (one text, one meaning)
TRUST_HELP = ("Unpickle the pre-segmenter's checkpoints in full (torch.load(weights_only=False), as nnU-Net does): "
              "the checkpoint may then run code, so use it only for files you trust. Without it, checkpoints load "
              "with torch.load(weights_only=True) plus numpy's scalar types, and anything else is refused.")
