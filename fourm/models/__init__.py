"""The FourM model, its encoder view, official-name factories and official-checkpoint I/O."""
from fourm.models.checkpoint import CheckpointError, load_encoder, load_pretrained, read_checkpoint, save_checkpoint
from fourm.models.encoder import FourMEncoder
from fourm.models.factory import config_for, create_model, model_names, transformer_parameters
from fourm.models.fourm import FourM

__all__ = [
    "FourM", "FourMEncoder", "create_model", "config_for", "model_names", "transformer_parameters",
    "load_pretrained", "load_encoder", "save_checkpoint", "read_checkpoint", "CheckpointError",
]
