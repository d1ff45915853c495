"""Model families. Importing this package registers every model with timm."""
from .plainmamba import PlainMamba
from .vim import Vim
