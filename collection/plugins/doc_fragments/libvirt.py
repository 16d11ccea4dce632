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
    type: str
    default: qemu:///system
"""
