"""The jupyter-server extension every runtime runs: notebook sync with the workspace bucket
and edit locks. Enabled by the control plane's backends when they start jupyter-server."""

from typing import Any


def _jupyter_server_extension_points() -> list[dict[str, Any]]:
    from extensions.envmgr_ext.app import EnvmgrExtension
    return [{"module": "extensions.envmgr_ext", "app": EnvmgrExtension}]
