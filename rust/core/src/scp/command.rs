//! The few fields of a DIMSE command set (PS3.7 annex E) the data plane needs
//! before a data set arrives: whether one follows, and the UIDs its file meta
//! names. The caller parses and judges the whole command itself.

/// (0000,0800) Command Data Set Type: no data set follows.
const NO_DATASET: u16 = 0x0101;

const AFFECTED_SOP_CLASS_UID: u32 = 0x0000_0002;
const COMMAND_FIELD: u32 = 0x0000_0100;
const COMMAND_DATA_SET_TYPE: u32 = 0x0000_0800;
const AFFECTED_SOP_INSTANCE_UID: u32 = 0x0000_1000;

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CommandFields {
    pub command_field: u16,
    pub has_dataset: bool,
    /// Empty when the command has none.
    pub sop_class_uid: String,
    pub sop_instance_uid: String,
}

/// Read a command set (implicit VR little endian, group 0000 only). Every
/// length is checked against what is left; an error says what is wrong.
pub fn read_command(data: &[u8]) -> Result<CommandFields, String> {
    let mut fields = CommandFields::default();
    let (mut command_field, mut data_set_type) = (None, None);
    let mut pos = 0usize;
    while pos < data.len() {
        let Some(header) = data.get(pos..pos + 8) else {
            return Err(format!(
                "command set truncated in an element header at byte {pos}"
            ));
        };
        let group = u16::from_le_bytes([header[0], header[1]]);
        let element = u16::from_le_bytes([header[2], header[3]]);
        let length = u32::from_le_bytes([header[4], header[5], header[6], header[7]]) as usize;
        pos += 8;
        if group != 0 {
            return Err(format!(
                "element ({group:04X},{element:04X}) in a command set"
            ));
        }
        let Some(value) = data.get(pos..).and_then(|rest| rest.get(..length)) else {
            return Err(format!(
                "element (0000,{element:04X}) runs past the command set's end"
            ));
        };
        pos += length;
        let us = || match value {
            [a, b] => Ok(u16::from_le_bytes([*a, *b])),
            _ => Err(format!(
                "element (0000,{element:04X}) must be 2 bytes, not {length}"
            )),
        };
        match u32::from(element) {
            COMMAND_FIELD => command_field = Some(us()?),
            COMMAND_DATA_SET_TYPE => data_set_type = Some(us()?),
            AFFECTED_SOP_CLASS_UID => fields.sop_class_uid = uid(value, element)?,
            AFFECTED_SOP_INSTANCE_UID => fields.sop_instance_uid = uid(value, element)?,
            _ => {}
        }
    }
    fields.command_field = command_field.ok_or("command set has no Command Field (0000,0100)")?;
    fields.has_dataset =
        data_set_type.ok_or("command set has no Command Data Set Type (0000,0800)")? != NO_DATASET;
    Ok(fields)
}

fn uid(value: &[u8], element: u16) -> Result<String, String> {
    let end = value
        .iter()
        .rposition(|&b| b != 0 && b != b' ')
        .map_or(0, |i| i + 1);
    let text = &value[..end];
    if !text.iter().all(|b| b.is_ascii_graphic()) {
        return Err(format!("element (0000,{element:04X}) is not a UID"));
    }
    Ok(String::from_utf8_lossy(text).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn element(tag: u16, value: &[u8]) -> Vec<u8> {
        let mut out = vec![0, 0];
        out.extend(tag.to_le_bytes());
        out.extend((value.len() as u32).to_le_bytes());
        out.extend(value);
        out
    }

    #[test]
    fn a_c_store_request_names_its_instance() {
        let mut command = element(0x0000, &[0, 0, 0, 0]);
        command.extend(element(0x0002, b"1.2.840.10008.5.1.4.1.1.2\0"));
        command.extend(element(0x0100, &1u16.to_le_bytes()));
        command.extend(element(0x0800, &0u16.to_le_bytes()));
        command.extend(element(0x1000, b"1.2.3 "));
        let fields = read_command(&command).unwrap();
        assert_eq!(
            fields,
            CommandFields {
                command_field: 1,
                has_dataset: true,
                sop_class_uid: "1.2.840.10008.5.1.4.1.1.2".into(),
                sop_instance_uid: "1.2.3".into(),
            }
        );
    }

    #[test]
    fn malformed_command_sets_are_errors() {
        let field = element(0x0100, &0x30u16.to_le_bytes());
        let no_dataset = element(0x0800, &0x0101u16.to_le_bytes());
        let echo = [field.clone(), no_dataset.clone()].concat();
        assert!(!read_command(&echo).unwrap().has_dataset);
        assert!(read_command(&field).unwrap_err().contains("Data Set Type"));
        assert!(read_command(&no_dataset)
            .unwrap_err()
            .contains("Command Field"));
        assert!(read_command(&echo[..echo.len() - 1])
            .unwrap_err()
            .contains("runs past"));
        assert!(read_command(&echo[..5]).unwrap_err().contains("truncated"));
        let mut other_group = echo.clone();
        other_group[0] = 8;
        assert!(read_command(&other_group)
            .unwrap_err()
            .contains("(0008,0100)"));
        let wide = [element(0x0100, &[1, 0, 0, 0]), no_dataset.clone()].concat();
        assert!(read_command(&wide).unwrap_err().contains("2 bytes"));
        let binary_uid = [echo.clone(), element(0x1000, b"1.\x012")].concat();
        assert!(read_command(&binary_uid).unwrap_err().contains("not a UID"));
        // A declared length near 4 GiB is checked, never allocated.
        let mut huge = element(0x0002, b"");
        huge[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(read_command(&huge).unwrap_err().contains("runs past"));
    }
}
