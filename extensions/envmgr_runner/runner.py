"""Run one notebook with papermill and nbconvert, reporting progress as it goes.

The job folder holds `job.json` ({"parameters", "kernel_name", "language"}) and `input.ipynb`; the
runner writes `events.jsonl` (one JSON object a line: `start`, `cell`, `log`), then
`output.ipynb`, `output.html`, `log.txt` and last `result.json`, each atomically, so a
reader never sees half a file and a result means everything else is there."""

from __future__ import annotations

import json
import os
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any, TextIO

INJECTED = "injected-parameters"
ERROR_MARKER = "papermill-error-cell-tag"  # papermill's ERROR_MARKER_TAG


class Events:
    """events.jsonl, appended line by line and flushed at once (the control plane tails it,
    also after a restart of its own, so every line carries a sequence number)."""

    def __init__(self, path: Path) -> None:
        self._f = path.open("a", encoding="utf-8")
        self._seq = 0
        self._lock = threading.Lock()

    def emit(self, kind: str, **fields: Any) -> None:
        with self._lock:
            self._seq += 1
            self._f.write(json.dumps({"seq": self._seq, "t": time.time(), "kind": kind,
                                      **fields}) + "\n")
            self._f.flush()


class LineStream:
    """A file-like object papermill writes a kernel's stdout or stderr to: every complete
    line becomes a `log` event as it arrives, and goes into log.txt."""

    def __init__(self, events: Events, name: str, log: TextIO) -> None:
        self.events, self.name, self.log = events, name, log
        self._partial = ""

    def write(self, text: str) -> int:
        self.log.write(text)
        self.log.flush()
        lines = (self._partial + text).split("\n")
        self._partial = lines.pop()
        for line in lines:
            self.events.emit("log", stream=self.name, line=line[:10_000])
        return len(text)

    def flush(self) -> None:
        if self._partial:
            self.events.emit("log", stream=self.name, line=self._partial[:10_000])
            self._partial = ""


def _write_atomic(path: Path, data: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(data, encoding="utf-8")
    os.replace(tmp, path)


def _own(cell: Any) -> bool:
    """A cell of the notebook's author: not papermill's injected parameters, not one of
    its error markers (an earlier run's, in a notebook submitted again)."""
    tags = cell.get("metadata", {}).get("tags", [])
    return INJECTED not in tags and ERROR_MARKER not in tags


def _source_index(submitted: Any, executed: list[Any], index: int) -> int:
    """The index, in the notebook as submitted, of cell `index` of the notebook as it ran
    (papermill removed an earlier run's error markers and injected its parameters): the
    n-th cell of the author's in one is the n-th in the other. The injected cell itself
    is reported as the cell after the `parameters` one (where it ran)."""
    cells = list(submitted.cells)
    if not _own(executed[index]):
        tagged = [i for i, c in enumerate(cells)
                  if "parameters" in c.get("metadata", {}).get("tags", [])]
        return tagged[0] + 1 if tagged else 0
    n = sum(1 for c in executed[:index] if _own(c))
    own = [i for i, c in enumerate(cells) if _own(c)]
    return own[n] if n < len(own) else index


def _engine(events: Events, failed: dict[str, Any]) -> Any:
    from papermill.engines import NBClientEngine, NotebookExecutionManager

    class Manager(NotebookExecutionManager):  # type: ignore[misc]
        def cell_start(self, cell: Any, cell_index: int | None = None, **kw: Any) -> None:
            super().cell_start(cell, cell_index, **kw)
            # the cells as they run (before papermill adds its error markers)
            failed.update(running=cell_index, cells=list(self.nb.cells))
            if cell.cell_type == "code":
                events.emit("cell", state="start", index=cell_index,
                            total=sum(1 for c in self.nb.cells if c.cell_type == "code"))

        def cell_exception(self, cell: Any, cell_index: int | None = None, **kw: Any) -> None:
            super().cell_exception(cell, cell_index, **kw)
            failed.setdefault("index", cell_index)

        def cell_complete(self, cell: Any, cell_index: int | None = None, **kw: Any) -> None:
            super().cell_complete(cell, cell_index, **kw)
            if cell.cell_type == "code":
                events.emit("cell", state="done", index=cell_index)

    class Engine(NBClientEngine):  # type: ignore[misc]
        """papermill's nbclient engine, with a manager that reports each cell."""

        @classmethod
        def execute_notebook(cls, nb: Any, kernel_name: str, output_path: Any = None,
                             progress_bar: bool = False, log_output: bool = False,
                             autosave_cell_every: int = 30, **kwargs: Any) -> Any:
            nb_man = Manager(nb, output_path=output_path, progress_bar=False,
                             log_output=log_output, autosave_cell_every=autosave_cell_every)
            nb_man.notebook_start()
            try:
                cls.execute_managed_notebook(nb_man, kernel_name, log_output=log_output,
                                             **kwargs)
            finally:
                nb_man.cleanup_pbar()
                nb_man.notebook_complete()
            return nb_man.nb

    return Engine


def _kernel_manager() -> dict[str, Any]:
    """Sandboxed: the kernel's channels are sockets of the job's uid alone (no ports)."""
    from envmgr_jupyter import ipc
    if not ipc.enabled():
        return {}
    from jupyter_client.manager import AsyncKernelManager
    return {"kernel_manager_class": ipc.with_ipc_channels(AsyncKernelManager)}


def _warm_exporter(box: dict[str, Any]) -> None:
    """nbconvert's import and templates (most of a second), loaded in a thread while the
    kernel starts and runs (the runner itself only waits on the kernel then)."""
    try:
        import nbformat
        from nbconvert import HTMLExporter
        exporter = HTMLExporter()
        exporter.from_notebook_node(nbformat.v4.new_notebook())  # compiles its templates
        box["exporter"] = exporter
    except Exception as exc:  # the main thread reports it when it needs the exporter
        box["error"] = exc


def run(folder: Path) -> int:
    job = json.loads((folder / "job.json").read_text())
    warm: dict[str, Any] = {}
    warming = threading.Thread(target=_warm_exporter, args=(warm,), daemon=True)
    events = Events(folder / "events.jsonl")
    result: dict[str, Any] = {"status": "succeeded", "error": None}
    with (folder / ".log.txt").open("w", encoding="utf-8") as log:
        out, err = LineStream(events, "stdout", log), LineStream(events, "stderr", log)
        try:
            import nbformat
            import papermill
            from nbclient.exceptions import DeadKernelError
            from papermill.engines import papermill_engines
            from papermill.exceptions import PapermillExecutionError

            failed: dict[str, Any] = {}
            papermill_engines.register("envmgr", _engine(events, failed))
            events.emit("start", pid=os.getpid())
            # Not before: two imports in one process only take turns (the GIL). From here
            # the main thread waits on the kernel, another process.
            warming.start()
            try:
                papermill.execute_notebook(
                    str(folder / "input.ipynb"), str(folder / ".output.ipynb"),
                    parameters=job.get("parameters") or {}, engine_name="envmgr",
                    kernel_name=job.get("kernel_name"), language=job.get("language"),
                    progress_bar=False,
                    stdout_file=out, stderr_file=err, cwd=str(folder / "work"),
                    request_save_on_cell_execute=True, **_kernel_manager())
            except PapermillExecutionError as exc:
                submitted = nbformat.read(str(folder / "input.ipynb"), as_version=4)
                cells = failed.get("cells") or nbformat.read(
                    str(folder / ".output.ipynb"), as_version=4).cells
                cell = _source_index(submitted, cells, failed.get("index", exc.cell_index))
                result = {"status": "failed", "error": {
                    "kind": "notebook_error", "cell": cell,
                    "ename": exc.ename, "evalue": str(exc.evalue)[:2000],
                    "message": f"cell {cell} raised {exc.ename}: {str(exc.evalue)[:500]}"}}
            except DeadKernelError as exc:
                # The notebook's own doing (a crash, os._exit, its memory limit), as for
                # papermill: a failure of the notebook, never retried (a retry ran all its
                # side effects again).
                submitted = nbformat.read(str(folder / "input.ipynb"), as_version=4)
                running: int | None = _source_index(
                    submitted, failed["cells"], failed["running"]) \
                    if "running" in failed else None
                result = {"status": "failed", "error": {
                    "kind": "notebook_error", "cell": running, "ename": "DeadKernelError",
                    "evalue": str(exc)[:2000],
                    "message": f"the kernel died while cell {running} ran (the notebook's own "
                               "doing: a crash, os._exit, or past its memory limit)"}}
            out.flush()
            err.flush()
            if not (folder / ".output.ipynb").exists():  # it died before the first save
                _write_atomic(folder / ".output.ipynb", (folder / "input.ipynb").read_text())
            nb = nbformat.read(str(folder / ".output.ipynb"), as_version=4)
            _name_paths(nb, job.get("paths") or {})
            _write_atomic(folder / "output.ipynb", nbformat.writes(nb))
            if warming.ident is not None:  # started
                warming.join()
            else:
                _warm_exporter(warm)
            if "error" in warm:
                raise warm["error"]
            html, _ = warm["exporter"].from_notebook_node(nb)
            _write_atomic(folder / "output.html", html)
            code = 0 if result["status"] == "succeeded" else 1
        except Exception as exc:  # the runner could not run it: say so, exit 2
            print(traceback.format_exc(), file=log)
            result = {"status": "failed", "error": {
                "kind": "infrastructure", "cell": None, "ename": type(exc).__name__,
                "evalue": str(exc)[:2000],
                "message": f"the runner could not run the notebook: "
                           f"{type(exc).__name__}: {str(exc)[:500]}"}}
            code = 2
    os.replace(folder / ".log.txt", folder / "log.txt")
    _write_atomic(folder / "result.json", json.dumps(result))
    return code


def _name_paths(nb: Any, paths: dict[str, str]) -> None:
    """papermill records the files it read and wrote: here, the job's folder on this
    machine. The notebook names the job's own paths instead (its bucket's)."""
    meta = nb.metadata.get("papermill")
    if isinstance(meta, dict):
        meta["input_path"] = paths.get("input")
        meta["output_path"] = paths.get("output")
        meta.pop("environment_variables", None)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m envmgr_runner <job folder>", file=sys.stderr)
        return 2
    return run(Path(argv[0]))
