"""Networks of the engine: one file per model family."""
from .baseline_net import BaselineNet
from .encoder import IdentityEncoder
from .havana import VariationalIdentityHead
from .pose_encoder import PoseEncoder
from .prior import IdentityPrior
from .unet import IdentityUNet, NoiseEncoder

__all__ = ["BaselineNet", "IdentityEncoder", "IdentityPrior", "IdentityUNet", "NoiseEncoder", "PoseEncoder",
           "VariationalIdentityHead"]
