//! Pointing disks of a domain definition at new image files, leaving everything else as is.
//!
//! The definition is streamed event by event through quick-xml: each `<disk>` is buffered
//! until its `<target>` is known, and only its `<source file>`, `<driver type>` and any
//! `<backingStore>` change. New paths are written as escaped attribute values.

use std::collections::HashMap;

use quick_xml::events::{BytesStart, Event};
use quick_xml::{Reader, Writer};

use crate::error::{Error, Result};

/// Replaces the image of each disk whose target is a key of `files` by the qcow2 file it maps to.
pub(crate) fn repoint_disks(domain_xml: &str, files: &HashMap<String, String>) -> Result<String> {
    let mut reader = Reader::from_str(domain_xml);
    let mut writer = Writer::new(Vec::new());
    let mut disk: Option<Vec<Event<'static>>> = None;
    loop {
        let event = reader.read_event().map_err(xml_error)?;
        match (&mut disk, event) {
            (_, Event::Eof) => break,
            (None, Event::Start(start)) if start.name().as_ref() == b"disk" => {
                disk = Some(vec![Event::Start(start.into_owned())])
            }
            (Some(buffer), Event::End(end)) if end.name().as_ref() == b"disk" => {
                buffer.push(Event::End(end.into_owned()));
                for event in rewrite_disk(std::mem::take(buffer), files)? {
                    writer.write_event(event).map_err(xml_error)?;
                }
                disk = None;
            }
            (Some(buffer), event) => buffer.push(event.into_owned()),
            (None, event) => writer.write_event(event).map_err(xml_error)?,
        }
    }
    String::from_utf8(writer.into_inner()).map_err(xml_error)
}

/// One buffered `<disk>`: rewritten when its target is in `files`, unchanged otherwise.
fn rewrite_disk(events: Vec<Event<'static>>, files: &HashMap<String, String>) -> Result<Vec<Event<'static>>> {
    let Some(new_file) = target_of(&events)?.and_then(|target| files.get(&target)) else {
        return Ok(events);
    };
    let mut out = Vec::with_capacity(events.len());
    // Depth inside a <backingStore> being dropped: the new image carries its own chain.
    let mut skipping = 0usize;
    for event in events {
        if skipping > 0 {
            match &event {
                Event::Start(_) => skipping += 1,
                Event::End(_) => skipping -= 1,
                _ => {}
            }
            continue;
        }
        match event {
            Event::Start(e) if e.name().as_ref() == b"backingStore" => skipping = 1,
            Event::Empty(e) if e.name().as_ref() == b"backingStore" => {}
            Event::Empty(e) if e.name().as_ref() == b"source" => {
                out.push(Event::Empty(with_attribute(&e, "file", new_file)?))
            }
            Event::Start(e) if e.name().as_ref() == b"source" => {
                out.push(Event::Start(with_attribute(&e, "file", new_file)?))
            }
            Event::Empty(e) if e.name().as_ref() == b"driver" => {
                out.push(Event::Empty(with_attribute(&e, "type", "qcow2")?))
            }
            other => out.push(other),
        }
    }
    Ok(out)
}

/// The `dev` of the disk's `<target>`.
fn target_of(events: &[Event<'static>]) -> Result<Option<String>> {
    for event in events {
        if let Event::Empty(e) | Event::Start(e) = event {
            if e.name().as_ref() == b"target" {
                if let Some(dev) = e.try_get_attribute("dev").map_err(xml_error)? {
                    return Ok(Some(dev.unescape_value().map_err(xml_error)?.into_owned()));
                }
            }
        }
    }
    Ok(None)
}

/// A copy of `element` with attribute `key` set to `value` (escaped on write).
fn with_attribute(element: &BytesStart<'_>, key: &str, value: &str) -> Result<BytesStart<'static>> {
    let name = String::from_utf8_lossy(element.name().as_ref()).into_owned();
    let mut copy = BytesStart::new(name);
    for attribute in element.attributes() {
        let attribute = attribute.map_err(xml_error)?;
        if attribute.key.as_ref() != key.as_bytes() {
            copy.push_attribute(attribute);
        }
    }
    copy.push_attribute((key, value));
    Ok(copy.into_owned())
}

fn xml_error(e: impl std::fmt::Display) -> Error {
    Error::Xml { doing: "pointing domain disks at new images".to_string(), message: e.to_string() }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOMAIN: &str = r#"<domain type='qemu'>
  <name>web1</name>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='raw' cache='none'/>
      <source file='/pool/web1.img'/>
      <backingStore type='file'><format type='qcow2'/><source file='/base.qcow2'/><backingStore/></backingStore>
      <target dev='vda' bus='virtio'/>
    </disk>
    <disk type='file' device='cdrom'><driver name='qemu' type='raw'/><source file='/pool/seed.iso'/><target dev='sda' bus='sata'/><readonly/></disk>
  </devices>
</domain>"#;

    #[test]
    fn only_the_named_disks_change() {
        let files = HashMap::from([("vda".to_string(), "/pool/web1 & co.qcow2".to_string())]);
        let xml = repoint_disks(DOMAIN, &files).unwrap();
        assert!(xml.contains(r#"<source file="/pool/web1 &amp; co.qcow2"/>"#), "{xml}");
        assert!(xml.contains(r#"<driver name="qemu" cache="none" type="qcow2"/>"#), "{xml}");
        assert!(!xml.contains("backingStore"), "{xml}");
        assert!(!xml.contains("/pool/web1.img"), "{xml}");
        assert!(xml.contains("<source file='/pool/seed.iso'/>"), "{xml}");
        assert!(xml.contains("<name>web1</name>"));
    }

    #[test]
    fn nothing_to_change_gives_the_same_document() {
        assert_eq!(repoint_disks(DOMAIN, &HashMap::new()).unwrap(), DOMAIN);
    }
}
