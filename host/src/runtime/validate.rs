//! Upload checks that run before compilation, so a bad file gets a message naming what
//! is wrong (not a wasm file, a core module, truncated) instead of a compiler error.

use super::error::UploadError;

/// Largest component the host accepts.
pub const MAX_COMPONENT_BYTES: usize = 64 << 20;

/// Check that `bytes` is a well-formed component binary.
pub fn check_component_binary(bytes: &[u8]) -> Result<(), UploadError> {
    if bytes.len() > MAX_COMPONENT_BYTES {
        return Err(UploadError::TooLarge {
            size: bytes.len(),
            limit: MAX_COMPONENT_BYTES,
        });
    }
    if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
        return Err(UploadError::NotWasm);
    }
    if wasmparser::Parser::is_core_wasm(bytes) {
        return Err(UploadError::CoreModule);
    }
    if !wasmparser::Parser::is_component(bytes) {
        return Err(UploadError::Malformed(format!(
            "unknown wasm header version {:02x?}",
            &bytes[4..8]
        )));
    }
    let mut validator = wasmparser::Validator::new_with_features(wasmparser::WasmFeatures::all());
    validator
        .validate_all(bytes)
        .map_err(|e| UploadError::Malformed(e.to_string()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_headers() {
        assert!(matches!(
            check_component_binary(b"hello world, not wasm"),
            Err(UploadError::NotWasm)
        ));
        assert!(matches!(
            check_component_binary(b"\0asm"),
            Err(UploadError::NotWasm)
        ));
        assert!(matches!(
            check_component_binary(b"\0asm\x01\0\0\0"),
            Err(UploadError::CoreModule)
        ));
        // A component header with nothing after it is a valid (empty) component.
        assert!(check_component_binary(b"\0asm\x0d\0\x01\0").is_ok());
        // Cut in the middle of a section.
        assert!(matches!(
            check_component_binary(b"\0asm\x0d\0\x01\0\x01\x10\0"),
            Err(UploadError::Malformed(_))
        ));
    }
}
