//! `libvirt_inventory`: an Ansible script inventory over one or more libvirt URIs and LXD
//! servers.
//!
//! Ansible runs it with `--list` (or `--host NAME`); it prints one JSON document on stdout
//! and nothing else. Diagnostics go to stderr. It fails only when no source could be read.

mod cache;
mod lxd;
mod render;
mod settings;
mod sources;
mod trust;

use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context};
use serde_json::{json, Value};

use settings::{Mode, Settings};
use sources::{Found, Source};

fn main() -> ExitCode {
    virtfarm_libvirt::ssh_reuse::enable();
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("libvirt_inventory: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    let started = Instant::now();
    let settings = Settings::from_command_line()?;
    let inventory =
        match settings.cache.as_ref().filter(|_| !settings.refresh).and_then(|c| c.load(&settings.cache_key())) {
            Some(cached) => cached,
            None => fresh_inventory(&settings)?,
        };
    let output = match &settings.mode {
        Mode::List => inventory,
        // An unknown host has no variables, which Ansible expects as `{}`.
        Mode::Host(name) => inventory["_meta"]["hostvars"].get(name).cloned().unwrap_or_else(|| json!({})),
    };
    let text = if settings.pretty { serde_json::to_string_pretty(&output) } else { serde_json::to_string(&output) };
    println!("{}", text.context("writing the inventory as JSON")?);
    if settings.stats {
        eprintln!("libvirt_inventory: total {:.1} ms", started.elapsed().as_secs_f64() * 1000.0);
    }
    Ok(())
}

/// Reads every source and renders the inventory; caches it when every source answered.
fn fresh_inventory(settings: &Settings) -> anyhow::Result<Value> {
    let sources = settings.sources();
    let reports = sources::read_all(&sources, &settings.scan, settings.timeout);
    let mut warnings = Vec::new();
    let mut scans = Vec::new();
    let mut listings = Vec::new();
    for report in reports {
        let name = report.source.name().to_string();
        let ms = report.elapsed.as_secs_f64() * 1000.0;
        match report.outcome {
            Ok(Found::Libvirt(scan)) => {
                if settings.stats {
                    let (domains, calls) = (scan.domains.len(), scan.calls);
                    eprintln!("libvirt_inventory: {name}: {domains} domains, {calls} libvirt calls, {ms:.1} ms");
                }
                warnings.extend(scan.warnings.iter().map(|w| format!("{name}: {w}")));
                scans.push((name, scan));
            }
            Ok(Found::Lxd(listing)) => {
                if settings.stats {
                    let (instances, calls) = (listing.instances.len(), listing.calls);
                    eprintln!("libvirt_inventory: {name}: {instances} instances, {calls} LXD API calls, {ms:.1} ms");
                }
                listings.push(listing);
            }
            Err(message) => warnings.push(format!("{name}: {message}")),
        }
    }
    for warning in &warnings {
        eprintln!("libvirt_inventory: warning: {warning}");
    }
    if scans.is_empty() && listings.is_empty() {
        let names: Vec<&str> = sources.iter().map(Source::name).collect();
        bail!("no libvirt URI or LXD server could be read ({})", names.join(", "));
    }
    for uri in settings.unread_trusted_uris() {
        eprintln!("libvirt_inventory: warning: trusted_uris: {uri} is not one of the URIs read (compared as written)");
    }
    let render::Rendered { document: inventory, left_out } =
        render::inventory(&scans, &listings, &warnings, &settings.render);
    // Once per scan: a cached inventory has them left out already.
    for warning in &left_out {
        eprintln!("libvirt_inventory: warning: {warning}");
    }
    let complete = scans.len() + listings.len() == sources.len();
    if let (Some(cache), true) = (&settings.cache, complete) {
        if let Err(e) = cache.store(&settings.cache_key(), &inventory) {
            eprintln!("libvirt_inventory: warning: cache file {}: {e}", cache.path.display());
        }
    }
    Ok(inventory)
}
