"""Model families (one file each, timm style). Importing this package registers every model with timm."""
from .plainmamba import PlainMamba
from .vim import Vim

__all__ = ['PlainMamba', 'Vim']
