//! Part 10 file meta information (PS3.10 section 7.1) for a received data set:
//! the preamble, `DICM` and the group 0002 elements, explicit VR little endian.

/// Who wrote the file: (0002,0012) and (0002,0013).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Implementation {
    pub class_uid: String,
    pub version_name: String,
}

fn element(out: &mut Vec<u8>, element: u16, vr: &[u8; 2], value: &[u8], pad: u8) {
    let padded = value.len() + value.len() % 2;
    out.extend(2u16.to_le_bytes());
    out.extend(element.to_le_bytes());
    out.extend(vr);
    if vr == b"OB" {
        out.extend([0, 0]);
        out.extend((padded as u32).to_le_bytes());
    } else {
        // Every value here is a UID, an AE title or a version name: 64 bytes at most.
        out.extend((padded as u16).to_le_bytes());
    }
    out.extend(value);
    if value.len() % 2 == 1 {
        out.push(pad);
    }
}

/// The meta group of a data set of `sop_class_uid` / `sop_instance_uid` in
/// `transfer_syntax_uid`, received from `source_ae_title` (empty: none).
pub fn file_meta(
    sop_class_uid: &str,
    sop_instance_uid: &str,
    transfer_syntax_uid: &str,
    source_ae_title: &str,
    implementation: &Implementation,
) -> Vec<u8> {
    let mut body = Vec::with_capacity(256);
    element(&mut body, 0x0001, b"OB", &[0, 1], 0);
    element(&mut body, 0x0002, b"UI", sop_class_uid.as_bytes(), 0);
    element(&mut body, 0x0003, b"UI", sop_instance_uid.as_bytes(), 0);
    element(&mut body, 0x0010, b"UI", transfer_syntax_uid.as_bytes(), 0);
    element(
        &mut body,
        0x0012,
        b"UI",
        implementation.class_uid.as_bytes(),
        0,
    );
    element(
        &mut body,
        0x0013,
        b"SH",
        implementation.version_name.as_bytes(),
        b' ',
    );
    if !source_ae_title.is_empty() {
        element(&mut body, 0x0016, b"AE", source_ae_title.as_bytes(), b' ');
    }
    let mut out = vec![0u8; 128];
    out.extend(b"DICM");
    element(
        &mut out,
        0x0000,
        b"UL",
        &(body.len() as u32).to_le_bytes(),
        0,
    );
    out.extend(body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_meta_group_scans_back() {
        let implementation = Implementation {
            class_uid: "1.2.3.4".into(),
            version_name: "TEST_1".into(),
        };
        let meta = file_meta(
            "1.2.840.10008.5.1.4.1.1.7",
            "1.2.345",
            "1.2.840.10008.1.2.1",
            "SCU",
            &implementation,
        );
        let mut file = meta.clone();
        // (0008,0018) SOP Instance UID, so the dataset is not empty.
        file.extend([8, 0, 0x18, 0, b'U', b'I', 8, 0]);
        file.extend(b"1.2.345\0");
        let info = crate::scan(&file, &crate::ScanOptions::default()).unwrap();
        assert_eq!(info.dataset_offset, meta.len() as u64);
        assert_eq!(
            info.transfer_syntax_uid.as_deref(),
            Some("1.2.840.10008.1.2.1")
        );
        assert_eq!(info.sop_instance_uid.as_deref(), Some("1.2.345"));
        assert_eq!(meta.len() % 2, 0);
    }
}
