# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
name: libvirt_leases
short_description: libvirt domains and LXD instances, with the address Ansible reaches each one at
version_added: 0.1.0
author:
  - virtfarm maintainers (@virtfarm)
description:
  - Lists the domains of one or more libvirt URIs, running or not, by running the C(libvirt_inventory)
    executable bundled in the collection's C(libexec/) directory and reading its JSON.
  - Every running domain gets C(ansible_host), taken in this order from its DHCP lease (matched by MAC,
    newest unexpired), a static DHCP reservation of its network, its guest agent, the host's ARP table;
    C(libvirt_ip_source) tells which.
  - Few libvirt calls, whatever the number of domains; one domain listing per URI, one XML read per domain,
    one lease read per network. URIs are read in parallel, each bounded by O(timeout); a URI that cannot be
    read is reported as a warning and in C(libvirt_inventory_warnings), the others are still listed.
  - Groups by state (C(running), C(shutoff), C(paused)), by network (C(network_NAME)), by URI (C(uri_URI)),
    by the host a URI reaches (C(hypervisor_HOST), C(localhost) for a local URI) and
    from the metadata kvm_provision stores (C(platform_NAME), C(target_NAME), C(project_NAME), its groups).
  - Host variables C(libvirt_uri), C(libvirt_hypervisor) (the host of the URI),
    C(libvirt_uuid), C(libvirt_state), C(libvirt_vcpus), C(libvirt_memory_mb),
    C(libvirt_interfaces) (mac, network, ip, source), C(libvirt_metadata), and, from the metadata
    kvm_provision records, C(ansible_user), C(ansible_port) and the variables whose names do not start with
    C(ansible_); the other variables of the metadata only from a URI in O(trusted_uris).
  - Secrets (variables named like passwords, passphrases, tokens, private keys) are never listed, trusted
    or not.
  - With O(lxd), the instances of LXD servers too, read through LXD's REST API on its unix socket or over HTTPS
    (one request per server, in parallel with the URIs and bounded by the same O(timeout)). Each is reached through the
    C(community.general.lxd) connection by its name, with C(ansible_connection=community.general.lxd),
    C(ansible_lxd_host) (the instance; C(ansible_host) holds its first global IPv4 address),
    C(ansible_lxd_remote) when the server is named C(REMOTE=SOCKET), C(ansible_lxd_project) outside the
    C(default) project. Variables C(lxd_server), C(lxd_state), C(lxd_type), C(lxd_profiles), C(lxd_project),
    C(lxd_location) (the cluster member), C(lxd_addresses) (interface, family, address), C(lxd_user) (the
    C(user.*) keys without C(user.)), and each C(user.KEY) as the variable C(KEY), under the same rule as domain
    metadata (O(trusted_uris)).
  - LXD groups by state (C(running), C(stopped), C(frozen)), type (C(lxd_container), C(lxd_virtual_machine)),
    C(profile_NAME), C(project_NAME), C(location_MEMBER), C(uri_SOURCE), and the comma-separated groups of
    C(user.ansible.groups).
  - A host name that an earlier source already listed (a domain and an instance both called C(web1)) is kept
    for the first; the later one is listed as C(NAME_SOURCE), with a warning.
  - The config file name must end with C(libvirt_leases.yml) or C(libvirt_leases.yaml).
requirements:
  - "On the controller: x86_64 Linux with glibc 2.28 or newer (RHEL, Rocky and Alma 8, Debian 10, Ubuntu 20.04 and newer)."
  - "The libvirt client library, version 4.1 or newer: C(libvirt0) on Debian and Ubuntu, C(libvirt-libs) on RHEL and
    its rebuilds."
extends_documentation_fragment:
  - constructed
  - inventory_cache
options:
  plugin:
    description: Marks the file as a configuration of this plugin.
    type: str
    required: true
    choices: [virtfarm.libvirt.libvirt_leases]
  uris:
    description:
      - libvirt URIs to read, for example V(qemu:///system) or V(qemu+ssh://root@host1/system).
      - When empty, the executable takes them from E(LIBVIRT_INVENTORY_URIS) (comma separated), then
        E(LIBVIRT_DEFAULT_URI), then uses V(qemu:///system).
    type: list
    elements: str
    default: []
  lxd:
    description:
      - LXD servers to read, each the path of its unix socket, optionally C(unix://) in front and C(REMOTE=)
        before that, for example V(/var/lib/lxd/unix.socket) (Debian's C(lxd)), V(/var/snap/lxd/common/lxd/unix.socket),
        or V(lab=/var/lib/lxd/unix.socket); or C(REMOTE=https://HOST[:PORT]) (port 8443 by default) for a remote
        server or a cluster member.
      - Over HTTPS the executable authenticates as the C(lxc) client does, with its files for REMOTE, namely the client
        certificate C(client.crt) and C(client.key), and the server's certificate pinned in C(servercerts/REMOTE.crt)
        (what C(lxc remote add REMOTE https://HOST) stores), in E(LXD_CONF), else C(~/.config/lxc).
      - REMOTE is the name the C(lxc) client on the controller knows the server by, which the connection plugin
        uses (C(ansible_lxd_remote)); without it the plugin uses C(lxc)'s C(local) remote, which must be the same
        server.
      - When set and O(uris) is empty, no libvirt URI is read unless E(LIBVIRT_INVENTORY_URIS) names some.
    type: list
    elements: str
    default: []
  networks:
    description: libvirt networks whose NIC gives C(ansible_host) when a domain has several NICs.
    type: list
    elements: str
    default: []
  prefix:
    description: Put in front of every group name the executable makes.
    type: str
    default: ""
  exclude_shutoff:
    description: Leave shut-off domains out.
    type: bool
    default: false
  ipv6:
    description: Use an IPv6 address when a NIC has no IPv4 one.
    type: bool
    default: false
  agent_connection:
    description:
      - For a running domain that has no address but whose guest agent answers, set
        C(ansible_connection=community.libvirt.libvirt_qemu) and C(ansible_host) to the domain name.
    type: bool
    default: false
  trusted_uris:
    description:
      - URIs, written exactly as in O(uris), whose domains' metadata may set any host variable, including
        the connection and execution variables C(ansible_connection), C(ansible_host), C(ansible_*_args),
        C(ansible_*_interpreter), C(*_executable), the become settings and any other C(ansible_) variable.
      - Empty by default because anyone who can change a domain on a hypervisor (C(virsh edit),
        C(virsh metadata), a libvirt client with write access) writes that metadata, and those variables
        run commands on the Ansible controller, for example a C(ProxyCommand) in C(ansible_ssh_common_args),
        or C(ansible_connection=local), which runs a play meant for the VM on the controller itself.
        From a URI not listed here only C(ansible_user), C(ansible_port) and the variables that neither start
        with C(ansible_) nor end with C(_executable) are taken, and a warning names each variable left out.
      - List a URI only when everyone who can write its domain definitions may also run commands as you on
        this controller. Only this configuration says what is trusted, never anything stored on a hypervisor.
      - The executable used directly as a script inventory takes the same setting as C(trusted_uris) in its
        JSON config file or C(--trusted-uri); there, text from a URI not trusted is also marked so that Ansible
        never renders it as a template.
    type: list
    elements: str
    default: []
  timeout:
    description:
      - Seconds to wait for each URI or LXD server before reporting it as failed.
      - The guest agents asked for the addresses of guests without a lease answer within what is left of it,
        at most 10 seconds each; a guest whose agent there is no time left to ask is listed without
        C(ansible_host), with a warning, and the rest of its URI is still listed.
    type: float
    default: 10
  executable:
    description: Path of the C(libvirt_inventory) executable; the one bundled in the collection by default.
    type: path
seealso:
  - name: Script inventory
    description: The same executable works directly as a script inventory with C(-i).
    link: https://docs.ansible.com/ansible/latest/inventory_guide/intro_dynamic_inventory.html
notes:
  - The executable is a native binary built for the controller; it needs the libvirt client library.
"""

EXAMPLES = r"""
# farm.libvirt_leases.yml
plugin: virtfarm.libvirt.libvirt_leases
uris:
  - qemu:///system
  - qemu+ssh://root@hv2/system
networks: [provisioning]
# Our own hypervisor: its domains' metadata may set connection variables (for example
# ansible_python_interpreter); hv2 is shared, so only the safe variables come from it.
trusted_uris:
  - qemu:///system
keyed_groups:
  - key: libvirt_metadata.project
    prefix: project
compose:
  ansible_ssh_common_args: "'-o StrictHostKeyChecking=no'"
cache: true
cache_plugin: ansible.builtin.jsonfile
cache_connection: ~/.cache/virtfarm-inventory
cache_timeout: 300
---
# lxd.libvirt_leases.yml: the VMs of this host and the containers of its LXD, in one inventory;
# `ansible all -i lxd.libvirt_leases.yml -m ping` reaches the containers with community.general.lxd
# (the lxc client), no ssh.
plugin: virtfarm.libvirt.libvirt_leases
uris: [qemu:///system]
lxd: [/var/lib/lxd/unix.socket]
keyed_groups:
  - key: lxd_user.tier | default('none')
    prefix: tier
"""

import hashlib
import json
import os
import subprocess

from ansible.errors import AnsibleParserError
from ansible.plugins.inventory import BaseInventoryPlugin, Cacheable, Constructable

# plugins/inventory/libvirt_leases.py -> the collection root -> libexec/libvirt_inventory
BUNDLED_EXECUTABLE = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "libexec", "libvirt_inventory"
)


class InventoryModule(BaseInventoryPlugin, Constructable, Cacheable):
    """Runs the bundled libvirt_inventory executable and adds what it lists."""

    NAME = "virtfarm.libvirt.libvirt_leases"

    def verify_file(self, path):
        return super().verify_file(path) and path.endswith(("libvirt_leases.yml", "libvirt_leases.yaml"))

    def parse(self, inventory, loader, path, cache=True):
        super().parse(inventory, loader, path, cache)
        self._read_config_data(path)
        command = self._command()
        # Keyed on the options too: an inventory listed with other trusted_uris is not reused.
        cache_key = "%s_%s" % (self.get_cache_key(path), hashlib.sha256(json.dumps(command).encode()).hexdigest()[:16])
        use_cache = self.get_option("cache")
        listed = None
        if use_cache and cache:
            listed = self._cache.get(cache_key)
        if listed is None:
            listed = self._run_executable(command)
            if use_cache:
                self._cache[cache_key] = listed
        self._populate(listed)

    def _command(self):
        command = [self.get_option("executable") or BUNDLED_EXECUTABLE, "--list"]
        for uri in self.get_option("uris"):
            command += ["--uri", uri]
        for server in self.get_option("lxd"):
            command += ["--lxd", server]
        for uri in self.get_option("trusted_uris"):
            command += ["--trusted-uri", uri]
        for network in self.get_option("networks"):
            command += ["--network", network]
        if self.get_option("prefix"):
            command += ["--prefix", self.get_option("prefix")]
        for flag in ("exclude_shutoff", "ipv6", "agent_connection"):
            if self.get_option(flag):
                command.append("--" + flag.replace("_", "-"))
        return command + ["--timeout", str(self.get_option("timeout"))]

    def _run_executable(self, command):
        try:
            # The executable bounds each URI itself; this only guards against a stuck process.
            done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=self.get_option("timeout") + 30)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise AnsibleParserError("running %s: %s" % (command[0], e))
        for line in done.stderr.splitlines():
            if done.returncode == 0 and line.strip():
                self.display.warning(line)
        if done.returncode != 0:
            raise AnsibleParserError("%s failed: %s" % (command[0], done.stderr.strip() or "exit status %d" % done.returncode))
        try:
            return json.loads(done.stdout)
        except ValueError as e:
            raise AnsibleParserError("%s printed no JSON inventory: %s" % (command[0], e))

    def _populate(self, listed):
        listed = _plain(listed)
        for group, body in listed.items():
            if group == "_meta":
                continue
            self.inventory.add_group(group)
            for host in body.get("hosts", []):
                self.inventory.add_host(host, group=group)
            for name, value in body.get("vars", {}).items():
                self.inventory.set_variable(group, name, value)
        strict = self.get_option("strict")
        for host, variables in listed.get("_meta", {}).get("hostvars", {}).items():
            self.inventory.add_host(host)
            for name, value in variables.items():
                self.inventory.set_variable(host, name, value)
            self._set_composite_vars(self.get_option("compose"), variables, host, strict=strict)
            self._add_host_to_composed_groups(self.get_option("groups"), variables, host, strict=strict)
            self._add_host_to_keyed_groups(self.get_option("keyed_groups"), variables, host, strict=strict)


def _plain(value):
    """The listing with each {"__ansible_unsafe": text} (text from an untrusted URI, marked so for script
    inventories) replaced by its text: a variable an inventory plugin sets is never a template in ansible-core 2.19."""
    if isinstance(value, dict):
        if len(value) == 1 and isinstance(value.get("__ansible_unsafe"), str):
            return value["__ansible_unsafe"]
        return {name: _plain(item) for name, item in value.items()}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    return value
