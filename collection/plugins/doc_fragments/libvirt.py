# -*- coding: utf-8 -*-
# Copyright (c) virtfarm contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import absolute_import, division, print_function

__metaclass__ = type


class ModuleDocFragment(object):
    # The libvirt connection every module that manages domains takes.
    DOCUMENTATION = r"""
options:
  uri:
    description:
      - libvirt connection URI, for example V(qemu:///system) or V(qemu+ssh://root@host/system).
      - Everything goes through libvirt's API, so a remote URI works as a local one does.
      - "With libvirt's ssh transport (V(qemu+ssh://...)), tasks against the same host share one ssh connection:
        the first opens it, later tasks and parallel forks use it, and it closes 30 seconds after its last task.
        ssh runs as the user's own, with their C(~/.ssh/config), keys, known_hosts and jump hosts; the module
        only adds C(ControlMaster), C(ControlPath) (a socket in C(~/.ansible/cp)) and C(ControlPersist).
        To turn this off, name the ssh program in the URI yourself, for example V(qemu+ssh://root@host/system?command=ssh);
        a URI with its own C(command=) is used as it is."
    type: str
    default: qemu:///system
"""
