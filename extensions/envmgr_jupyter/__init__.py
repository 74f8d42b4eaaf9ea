"""envmgr_jupyter: what runs on a runtime. A jupyter-server extension that copies notebooks
between the workspace and the runtime's disk and holds edit locks, through the control
plane's runtime API (it imports nothing of the control plane, and never touches a bucket).

Enabled by a config file in `jupyter_server_config.d` that the backend writes for each
runtime, with the control plane's URL and the runtime's token in `EnvmgrJupyter` traits."""

from typing import Any


def _jupyter_server_extension_points() -> list[dict[str, Any]]:
    from envmgr_jupyter.app import EnvmgrJupyter
    return [{"module": "envmgr_jupyter", "app": EnvmgrJupyter}]
