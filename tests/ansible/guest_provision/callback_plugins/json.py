# -*- coding: utf-8 -*-
# GPL-3.0-or-later
"""The `json` stdout callback for ansible-core alone, found beside the playbook.

ansible-core routes `json` to ansible.posix, which the test bed does not install. This keeps
the shape tests read: {"plays": [{"play", "tasks": [{"task": {"name"}, "hosts": {HOST: RESULT}}]}], "stats"}.
"""

import json

from ansible.plugins.callback import CallbackBase

DOCUMENTATION = """
name: json
type: stdout
short_description: one JSON document with every task result
description: Prints, at the end of the run, every task's result per host as one JSON document.
"""


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "stdout"
    CALLBACK_NAME = "json"

    def __init__(self):
        super().__init__()
        self._plays = []

    def v2_playbook_on_play_start(self, play):
        self._plays.append({"play": {"name": play.get_name()}, "tasks": []})

    def _task_start(self, task, **kwargs):
        self._plays[-1]["tasks"].append({"task": {"name": task.get_name(), "uuid": task._uuid}, "hosts": {}})

    v2_playbook_on_task_start = _task_start
    v2_playbook_on_handler_task_start = _task_start

    def _record(self, result, outcome=None):
        recorded = dict(result._result)
        if outcome:
            recorded[outcome] = True
        for task in reversed(self._plays[-1]["tasks"]):
            if task["task"]["uuid"] == result._task._uuid:
                task["hosts"][result._host.get_name()] = recorded
                return

    def v2_runner_on_ok(self, result):
        self._record(result)

    def v2_runner_on_failed(self, result, ignore_errors=False):
        self._record(result, "failed")

    def v2_runner_on_skipped(self, result):
        self._record(result, "skipped")

    def v2_runner_on_unreachable(self, result):
        self._record(result, "unreachable")

    def v2_playbook_on_stats(self, stats):
        summary = {host: stats.summarize(host) for host in sorted(stats.processed)}
        self._display.display(json.dumps({"plays": self._plays, "stats": summary}, default=str, sort_keys=True))
