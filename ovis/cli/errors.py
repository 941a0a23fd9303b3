"""Which exceptions are the user's input going wrong (shown as one clean line) rather than bugs."""

from __future__ import annotations

from pydantic import ValidationError

from ovis.compose import WeightsUnavailableError
from ovis.interfaces import ChatFormatError, ImageError, PresetError
from ovis.model import ImageCountError
from ovis.plugin_host import PluginError, UnknownNameError
from ovis.processing import SequenceTooLongError

USER_ERRORS: tuple[type[BaseException], ...] = (
    UnknownNameError,
    PluginError,
    PresetError,
    ImageError,
    ChatFormatError,
    ImageCountError,
    SequenceTooLongError,
    WeightsUnavailableError,
    ValidationError,
    FileExistsError,
    FileNotFoundError,
    ValueError,
)


def is_user_error(exc: BaseException) -> bool:
    return isinstance(exc, USER_ERRORS)
