# -*- coding: utf-8 -*-
# Copyright: exliar.vfio contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
---
name: vfio_summary
type: aggregate
short_description: Per-host summary and run report of exliar.vfio, and the end of the plugin lifecycle
version_added: 0.1.0
description:
  - At the end of a playbook run, prints for every host the GPUs with their companion functions, the IOMMU
    group verdicts with the devices that block them, the IOMMU state and what to fix, and the bootloader and
    initramfs generator in use.
  - Hosts that failed or were unreachable are listed with their error, so one bad host never hides the others.
  - Ends the extension-plugin lifecycle of every host (C(on_cleanup), then C(on_unload)), lists the plugins with
    their failures, and writes a self-contained HTML run report with the plugins' UI panels.
author:
  - Exliar VFIO developers (@exliar)
requirements:
  - enable in ansible.cfg with C(callbacks_enabled = exliar.vfio.vfio_summary) (the repository's ansible.cfg does)
options:
  report_dir:
    description:
      - Directory for the HTML run report (one file per run). Set it to an empty string to write none.
      - Defaults to C(exliar-vfio/reports) in the user's cache directory (C($XDG_CACHE_HOME) or C(~/.cache)).
    type: str
    env:
      - name: EXLIAR_VFIO_REPORT_DIR
    ini:
      - section: exliar_vfio
        key: report_dir
"""

import os
import time
from pathlib import Path

from ansible.plugins.callback import CallbackBase

from ansible_collections.exliar.vfio.plugins.plugin_utils import _state as state_store
from ansible_collections.exliar.vfio.plugins.plugin_utils._report import render_html
from ansible_collections.exliar.vfio.plugins.plugin_utils._summary import render_summary


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "exliar.vfio.vfio_summary"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self) -> None:
        super().__init__()
        self.results: dict = {}

    def v2_playbook_on_start(self, playbook) -> None:
        """Scan plugin entry points once here; the forked workers inherit the result."""
        from ansible_collections.exliar.vfio.plugins.plugin_utils._session import entry_points  # noqa: PLC0415

        entry_points()

    def _host(self, result) -> dict:
        return self.results.setdefault(result._host.get_name(), {"facts": None, "failed": None})

    def _keep(self, result) -> None:
        facts = result._result.get("ansible_facts") or {}
        if isinstance(facts.get("vfio"), dict):
            self._host(result)["facts"] = facts["vfio"]
        if isinstance(facts.get("vfio_bind_plan"), dict):
            self._host(result)["bind"] = facts["vfio_bind_plan"]
        if isinstance(facts.get("vfio_bootloader_plan"), dict):
            self._host(result)["bootloader"] = dict(facts["vfio_bootloader_plan"],
                                                    next_boot_cmdline=facts.get("vfio_next_boot_cmdline"),
                                                    reboot_required=facts.get("vfio_reboot_required"))
        if isinstance(facts.get("vfio_vm_results"), list):
            self._host(result)["vms"] = facts["vfio_vm_results"]
        elif facts.get("vfio_reboot_required") is False and self._host(result).get("bootloader"):
            self._host(result)["bootloader"].update(reboot_required=False, verified=True)

    def v2_runner_on_ok(self, result) -> None:
        self._keep(result)

    def v2_runner_on_failed(self, result, ignore_errors=False) -> None:
        self._keep(result)
        if not ignore_errors:
            self._host(result)["failed"] = f"{result._task.get_name()}: {result._result.get('msg', 'failed')}"

    def v2_runner_on_unreachable(self, result) -> None:
        self._host(result)["failed"] = f"unreachable: {result._result.get('msg', '')}".strip()

    def v2_playbook_on_stats(self, stats) -> None:
        plugins = self._finish_plugins()
        if not self.results and not plugins:
            return
        self._display.banner("VFIO SUMMARY")
        self._display.display(render_summary(self.results, {h: p["summary"] for h, p in plugins.items()}))
        path = self._write_report(plugins)
        if path:
            self._display.display(f"run report: {path}")

    def _finish_plugins(self) -> dict:
        """on_cleanup and on_unload for every host whose stages loaded plugins in this run."""
        from ansible_collections.exliar.vfio.plugins.plugin_utils._session import finish_run  # noqa: PLC0415

        rdir = state_store.run_dir(os.getpid())
        try:
            return finish_run(rdir)
        except Exception as exc:  # noqa: BLE001 - the report must not hide the run's results
            self._display.warning(f"exliar.vfio plugins: could not finish the plugin lifecycle: {exc}")
            return {}

    def _write_report(self, plugins: dict):
        try:
            report_dir = self.get_option("report_dir")
        except KeyError:
            report_dir = None
        if report_dir == "":
            return None
        base = Path(report_dir or state_store.cache_home() / "reports").expanduser()
        try:
            base.mkdir(parents=True, exist_ok=True)
            path = base / f"run-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.html"
            path.write_text(render_html(self.results, plugins))
        except OSError as exc:
            self._display.warning(f"exliar.vfio: cannot write the run report in {base}: {exc.strerror}")
            return None
        return path
