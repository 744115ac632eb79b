"""sqsam's Label Studio ML backend: interactive clicks and salient pre-annotation.

    sqsam serve label-studio --port 9090          # or: gunicorn "sqsam_label_studio.app:create_app()"
    sqsam demo                                     # local Label Studio + sample images + this backend

A thin adapter: the model is :class:`sqsam_core.SqueezeSAM`, mask encodings are
:mod:`sqsam_core.formats`; this package only speaks Label Studio's protocol.
"""

__all__ = ["create_app", "register_commands"]


def create_app(*args, **kwargs):
    """See :func:`sqsam_label_studio.app.create_app` (imported lazily: Flask is an optional extra)."""
    from .app import create_app as _create_app

    return _create_app(*args, **kwargs)


def register_commands(subparsers) -> None:
    """Register ``serve label-studio`` and ``demo`` on sqsam's argparse subparsers."""
    from .cli import register_commands as _register

    _register(subparsers)


add_cli = register_commands
