"""Networks of the engine: one file per model family."""
from .encoder import IdentityEncoder
from .pose_encoder import PoseEncoder
from .prior import IdentityPrior
from .unet import IdentityUNet

__all__ = ["IdentityEncoder", "IdentityPrior", "IdentityUNet", "PoseEncoder"]
