//! llama.cpp's GGUF files: the header (metadata and tensor table), tensor data dequantised to
//! f32 from the block layouts of ggml, and the Llama-family key map from llama.cpp's tensor
//! names to Hugging Face's.
//!
//! Only the header is read on open; tensor data is read per tensor, so describing a model never
//! touches its weights.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use half::{bf16, f16};

use crate::error::InputError;

const MAGIC: &[u8; 4] = b"GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;
/// Values in a super-block of the k-quants.
const QK_K: usize = 256;

/// A metadata value as stored.
#[derive(Debug, Clone, PartialEq)]
pub enum MetaValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(String),
    Array(Vec<MetaValue>),
}

impl MetaValue {
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            MetaValue::U8(v) => Some(v as u64),
            MetaValue::U16(v) => Some(v as u64),
            MetaValue::U32(v) => Some(v as u64),
            MetaValue::U64(v) => Some(v),
            MetaValue::I8(v) => u64::try_from(v).ok(),
            MetaValue::I16(v) => u64::try_from(v).ok(),
            MetaValue::I32(v) => u64::try_from(v).ok(),
            MetaValue::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            MetaValue::I8(v) => Some(v as i64),
            MetaValue::I16(v) => Some(v as i64),
            MetaValue::I32(v) => Some(v as i64),
            MetaValue::I64(v) => Some(v),
            _ => self.as_u64().and_then(|v| i64::try_from(v).ok()),
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            MetaValue::F32(v) => Some(v as f64),
            MetaValue::F64(v) => Some(v),
            _ => self.as_i64().map(|v| v as f64),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            MetaValue::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            MetaValue::Bool(v) => Some(v),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[MetaValue]> {
        match self {
            MetaValue::Array(items) => Some(items),
            _ => None,
        }
    }

    /// A short rendering for people: arrays show their length and first items.
    pub fn summary(&self) -> String {
        match self {
            MetaValue::String(s) if s.chars().count() > 80 => {
                let head: String = s.chars().take(77).collect();
                format!("{:?}...", head)
            }
            MetaValue::String(s) => format!("{s:?}"),
            MetaValue::Array(items) => {
                let head: Vec<String> = items.iter().take(3).map(MetaValue::summary).collect();
                let more = if items.len() > 3 { ", ..." } else { "" };
                format!("[{} items: {}{more}]", items.len(), head.join(", "))
            }
            MetaValue::Bool(v) => v.to_string(),
            MetaValue::F32(v) => v.to_string(),
            MetaValue::F64(v) => v.to_string(),
            other => other.as_i64().map(|v| v.to_string()).unwrap_or_default(),
        }
    }

    /// As JSON; arrays longer than `max_items` are cut to their length and first items.
    pub(crate) fn to_json(&self, max_items: usize) -> serde_json::Value {
        use serde_json::json;
        match self {
            MetaValue::String(s) => json!(s),
            MetaValue::Bool(v) => json!(v),
            // The shortest decimal that reads back as the same f32 (1e-6, not 9.99999997e-7).
            MetaValue::F32(v) => json!(v.to_string().parse::<f64>().unwrap_or(*v as f64)),
            MetaValue::F64(v) => json!(v),
            MetaValue::Array(items) if items.len() > max_items => json!({
                "length": items.len(),
                "first": items.iter().take(max_items).map(|v| v.to_json(max_items)).collect::<Vec<_>>(),
            }),
            MetaValue::Array(items) => {
                json!(
                    items
                        .iter()
                        .map(|v| v.to_json(max_items))
                        .collect::<Vec<_>>()
                )
            }
            other => match other.as_u64() {
                Some(v) => json!(v),
                None => json!(other.as_i64()),
            },
        }
    }
}

/// ggml's tensor types: what curate can dequantise, and the names of the rest for errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgmlType {
    F32,
    F16,
    Bf16,
    F64,
    Q8_0,
    Q4_0,
    Q4_1,
    Q4K,
    Q6K,
    /// A type curate does not read: its ggml id and name.
    Other(u32, &'static str),
}

impl GgmlType {
    fn from_id(id: u32) -> Self {
        match id {
            0 => GgmlType::F32,
            1 => GgmlType::F16,
            2 => GgmlType::Q4_0,
            3 => GgmlType::Q4_1,
            8 => GgmlType::Q8_0,
            12 => GgmlType::Q4K,
            14 => GgmlType::Q6K,
            28 => GgmlType::F64,
            30 => GgmlType::Bf16,
            other => GgmlType::Other(other, other_type_name(other)),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            GgmlType::F32 => "F32",
            GgmlType::F16 => "F16",
            GgmlType::Bf16 => "BF16",
            GgmlType::F64 => "F64",
            GgmlType::Q8_0 => "Q8_0",
            GgmlType::Q4_0 => "Q4_0",
            GgmlType::Q4_1 => "Q4_1",
            GgmlType::Q4K => "Q4_K",
            GgmlType::Q6K => "Q6_K",
            GgmlType::Other(_, name) => name,
        }
    }

    /// Values per block and bytes per block; None for types curate does not read.
    fn layout(self) -> Option<(usize, usize)> {
        Some(match self {
            GgmlType::F32 => (1, 4),
            GgmlType::F16 | GgmlType::Bf16 => (1, 2),
            GgmlType::F64 => (1, 8),
            GgmlType::Q8_0 => (32, 34),
            GgmlType::Q4_0 => (32, 18),
            GgmlType::Q4_1 => (32, 20),
            GgmlType::Q4K => (QK_K, 144),
            GgmlType::Q6K => (QK_K, 210),
            GgmlType::Other(..) => return None,
        })
    }
}

/// The names ggml gives the types curate does not dequantise (for the error message).
fn other_type_name(id: u32) -> &'static str {
    match id {
        6 => "Q5_0",
        7 => "Q5_1",
        9 => "Q8_1",
        10 => "Q2_K",
        11 => "Q3_K",
        13 => "Q5_K",
        15 => "Q8_K",
        16 => "IQ2_XXS",
        17 => "IQ2_XS",
        18 => "IQ3_XXS",
        19 => "IQ1_S",
        20 => "IQ4_NL",
        21 => "IQ3_S",
        22 => "IQ2_S",
        23 => "IQ4_XS",
        24 => "I8",
        25 => "I16",
        26 => "I32",
        27 => "I64",
        29 => "IQ1_M",
        34 => "TQ1_0",
        35 => "TQ2_0",
        39 => "MXFP4",
        _ => "unknown",
    }
}

/// One entry of the tensor table.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    /// ggml order: `dims[0]` is the innermost (contiguous) dimension.
    pub dims: Vec<u64>,
    pub ggml_type: GgmlType,
    /// Offset from the start of the data section.
    pub offset: u64,
}

impl TensorInfo {
    /// The number of values; None when the dimensions' product does not fit 64 bits.
    pub(crate) fn elements(&self) -> Option<u64> {
        self.dims.iter().try_fold(1u64, |n, &d| n.checked_mul(d))
    }

    /// The shape in PyTorch order (outermost first), as a `[out, in]` weight is written.
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().rev().map(|&d| d as usize).collect()
    }

    /// Bytes of data, when the type is one curate reads and rows fill whole blocks.
    fn byte_len(&self) -> Result<usize, String> {
        let (block, bytes) = self.ggml_type.layout().ok_or_else(|| {
            format!(
                "tensor '{}' has type {} (curate reads F32, F16, BF16, F64, Q8_0, Q4_0, Q4_1, \
                 Q4_K and Q6_K)",
                self.name,
                self.ggml_type.name()
            )
        })?;
        let row = self.dims.first().copied().unwrap_or(1);
        if row % block as u64 != 0 {
            return Err(format!(
                "tensor '{}' has rows of {row} values, not whole {} blocks of {block}",
                self.name,
                self.ggml_type.name()
            ));
        }
        self.elements()
            .and_then(|n| (n / block as u64).checked_mul(bytes as u64))
            .and_then(|n| usize::try_from(n).ok())
            .ok_or_else(|| {
                format!(
                    "tensor '{}' has dimensions {:?} too large to address",
                    self.name, self.dims
                )
            })
    }
}

/// An open GGUF file: its header, with tensor data read on demand.
#[derive(Debug)]
pub struct GgufFile {
    pub path: PathBuf,
    pub version: u32,
    pub metadata: BTreeMap<String, MetaValue>,
    pub tensors: Vec<TensorInfo>,
    data_start: u64,
    file_len: u64,
}

impl GgufFile {
    /// Read the header of `path`. Malformed files are input errors naming the file.
    pub fn open(path: &Path) -> Result<GgufFile, InputError> {
        let label = path.display().to_string();
        let bad = |message: String| InputError::new(label.clone(), message);
        let file = File::open(path).map_err(|e| bad(format!("cannot read: {e}")))?;
        let file_len = file
            .metadata()
            .map_err(|e| bad(format!("cannot read: {e}")))?
            .len();
        let mut reader = HeaderReader {
            inner: BufReader::with_capacity(1 << 20, file),
            position: 0,
            file_len,
        };
        let magic = reader
            .bytes(4)
            .map_err(|_| bad("not a GGUF file (too short)".into()))?;
        if magic != MAGIC {
            return Err(bad("not a GGUF file (no GGUF magic)".into()));
        }
        let version = reader.u32().map_err(bad)?;
        if !(2..=3).contains(&version) {
            return Err(bad(format!(
                "GGUF version {version} is not supported (2 and 3 are)"
            )));
        }
        let tensor_count = reader.u64().map_err(bad)?;
        let metadata_count = reader.u64().map_err(bad)?;
        let mut metadata = BTreeMap::new();
        for _ in 0..metadata_count {
            let key = reader.string().map_err(bad)?;
            let kind = reader.u32().map_err(bad)?;
            let value = reader
                .value(kind, 0)
                .map_err(|e| bad(format!("metadata '{key}': {e}")))?;
            metadata.insert(key, value);
        }
        // Every entry takes at least 24 bytes; a larger count is a corrupt header.
        if tensor_count > file_len / 24 {
            return Err(bad(format!(
                "corrupt header: {tensor_count} tensors in {file_len} bytes"
            )));
        }
        let mut tensors = Vec::with_capacity(tensor_count as usize);
        for _ in 0..tensor_count {
            let name = reader.string().map_err(bad)?;
            let n_dims = reader.u32().map_err(bad)?;
            if n_dims == 0 || n_dims > 4 {
                return Err(bad(format!("tensor '{name}' has {n_dims} dimensions")));
            }
            let dims = (0..n_dims)
                .map(|_| reader.u64())
                .collect::<Result<Vec<_>, _>>()
                .map_err(bad)?;
            let ggml_type = GgmlType::from_id(reader.u32().map_err(bad)?);
            let offset = reader.u64().map_err(bad)?;
            tensors.push(TensorInfo {
                name,
                dims,
                ggml_type,
                offset,
            });
        }
        let alignment = metadata
            .get("general.alignment")
            .and_then(MetaValue::as_u64)
            .unwrap_or(DEFAULT_ALIGNMENT)
            .max(1);
        let data_start = reader
            .position
            .div_ceil(alignment)
            .checked_mul(alignment)
            .filter(|&start| start <= file_len)
            .ok_or_else(|| bad(format!("corrupt header: alignment {alignment}")))?;
        check_tensor_ranges(&tensors, data_start, file_len).map_err(bad)?;
        Ok(GgufFile {
            path: path.to_path_buf(),
            version,
            metadata,
            tensors,
            data_start,
            file_len,
        })
    }

    pub fn label(&self) -> String {
        self.path.display().to_string()
    }

    /// Where the tensor data begins: the header (metadata and tensor table) is what precedes.
    pub fn data_start(&self) -> u64 {
        self.data_start
    }

    pub fn get(&self, key: &str) -> Option<&MetaValue> {
        self.metadata.get(key)
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// The values of `info` as f32, in PyTorch order.
    pub fn read_f32(&self, info: &TensorInfo) -> Result<Vec<f32>, InputError> {
        let bad = |message: String| InputError::new(self.label(), message);
        let len = info.byte_len().map_err(bad)?;
        let start = self.data_start.checked_add(info.offset);
        let end = start.and_then(|s| s.checked_add(len as u64));
        let (Some(start), Some(end)) = (start, end) else {
            return Err(bad(format!(
                "tensor '{}' has an offset past the end of the file",
                info.name
            )));
        };
        if end > self.file_len {
            return Err(bad(format!(
                "tensor '{}' runs past the end of the file (truncated?)",
                info.name
            )));
        }
        let mut file = File::open(&self.path).map_err(|e| bad(format!("cannot read: {e}")))?;
        file.seek(SeekFrom::Start(start))
            .map_err(|e| bad(format!("cannot read: {e}")))?;
        let mut bytes = vec![0u8; len];
        file.read_exact(&mut bytes)
            .map_err(|e| bad(format!("cannot read tensor '{}': {e}", info.name)))?;
        Ok(dequantize(info.ggml_type, &bytes))
    }
}

/// Reads the header with bounds against the file length, so a corrupt count cannot allocate.
struct HeaderReader {
    inner: BufReader<File>,
    position: u64,
    file_len: u64,
}

impl HeaderReader {
    fn bytes(&mut self, n: u64) -> Result<Vec<u8>, String> {
        // position never passes file_len, so the subtraction cannot wrap (an addition could).
        if n > self.file_len - self.position {
            return Err("truncated header".into());
        }
        let mut buf = vec![0u8; n as usize];
        self.inner
            .read_exact(&mut buf)
            .map_err(|e| format!("cannot read the header: {e}"))?;
        self.position += n;
        Ok(buf)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], String> {
        Ok(self.bytes(N as u64)?.try_into().expect("N bytes"))
    }

    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    fn string(&mut self) -> Result<String, String> {
        let len = self.u64()?;
        let bytes = self.bytes(len)?;
        String::from_utf8(bytes).map_err(|_| "a string is not UTF-8".to_string())
    }

    fn value(&mut self, kind: u32, depth: usize) -> Result<MetaValue, String> {
        Ok(match kind {
            0 => MetaValue::U8(self.array::<1>()?[0]),
            1 => MetaValue::I8(self.array::<1>()?[0] as i8),
            2 => MetaValue::U16(u16::from_le_bytes(self.array()?)),
            3 => MetaValue::I16(i16::from_le_bytes(self.array()?)),
            4 => MetaValue::U32(self.u32()?),
            5 => MetaValue::I32(i32::from_le_bytes(self.array()?)),
            6 => MetaValue::F32(f32::from_le_bytes(self.array()?)),
            7 => MetaValue::Bool(self.array::<1>()?[0] != 0),
            8 => MetaValue::String(self.string()?),
            9 => {
                if depth > 2 {
                    return Err("arrays nested too deeply".into());
                }
                let item_kind = self.u32()?;
                let count = self.u64()?;
                if count > self.file_len - self.position {
                    return Err(format!("array of {count} items does not fit the file"));
                }
                let mut items = Vec::with_capacity(count as usize);
                for _ in 0..count {
                    items.push(self.value(item_kind, depth + 1)?);
                }
                MetaValue::Array(items)
            }
            10 => MetaValue::U64(self.u64()?),
            11 => MetaValue::I64(i64::from_le_bytes(self.array()?)),
            12 => MetaValue::F64(f64::from_le_bytes(self.array()?)),
            other => return Err(format!("unknown value type {other}")),
        })
    }
}

/// Every tensor of a type curate reads must lie inside the file's data section and overlap no
/// other: a header whose offsets wrap or alias would otherwise read header bytes, or one
/// tensor's bytes, as another's weights.
fn check_tensor_ranges(
    tensors: &[TensorInfo],
    data_start: u64,
    file_len: u64,
) -> Result<(), String> {
    let mut ranges = Vec::with_capacity(tensors.len());
    let mut names = std::collections::HashSet::new();
    for info in tensors {
        if !names.insert(info.name.as_str()) {
            return Err(format!(
                "corrupt header: tensor '{}' appears twice",
                info.name
            ));
        }
        let Ok(len) = info.byte_len() else {
            // Types curate does not read are refused when read; their size is unknown here.
            continue;
        };
        let start = data_start.checked_add(info.offset);
        let end = start.and_then(|s| s.checked_add(len as u64));
        match (start, end) {
            (Some(start), Some(end)) if end <= file_len => ranges.push((start, end, &info.name)),
            _ => {
                return Err(format!(
                    "tensor '{}' runs past the end of the file (truncated?)",
                    info.name
                ));
            }
        }
    }
    ranges.sort();
    for pair in ranges.windows(2) {
        let ((_, end, first), (start, _, second)) = (pair[0], pair[1]);
        if start < end {
            return Err(format!(
                "corrupt header: the data of tensors '{first}' and '{second}' overlap"
            ));
        }
    }
    Ok(())
}

/// Dequantise whole blocks of `kind` (the caller checked the length) to f32, with ggml's
/// arithmetic: scales widened to f32 first, then `scale * code (+ or - offset)`.
pub(crate) fn dequantize(kind: GgmlType, bytes: &[u8]) -> Vec<f32> {
    let half = |b: &[u8]| f16::from_le_bytes([b[0], b[1]]).to_f32();
    match kind {
        GgmlType::F32 => bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        GgmlType::F64 => bytes
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")) as f32)
            .collect(),
        GgmlType::F16 => bytes.chunks_exact(2).map(half).collect(),
        GgmlType::Bf16 => bytes
            .chunks_exact(2)
            .map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        GgmlType::Q8_0 => {
            let mut out = Vec::with_capacity(bytes.len() / 34 * 32);
            for block in bytes.chunks_exact(34) {
                let d = half(&block[0..2]);
                out.extend(block[2..].iter().map(|&q| (q as i8) as f32 * d));
            }
            out
        }
        GgmlType::Q4_0 | GgmlType::Q4_1 => {
            let (size, codes_at) = if kind == GgmlType::Q4_0 {
                (18, 2)
            } else {
                (20, 4)
            };
            let mut out = Vec::with_capacity(bytes.len() / size * 32);
            for block in bytes.chunks_exact(size) {
                let d = half(&block[0..2]);
                let codes = &block[codes_at..];
                // Low nibbles are the first 16 values, high nibbles the last 16.
                let nibbles = codes
                    .iter()
                    .map(|&q| q & 0x0F)
                    .chain(codes.iter().map(|&q| q >> 4));
                if kind == GgmlType::Q4_0 {
                    out.extend(nibbles.map(|q| (q as i8 - 8) as f32 * d));
                } else {
                    let m = half(&block[2..4]);
                    out.extend(nibbles.map(|q| d * q as f32 + m));
                }
            }
            out
        }
        GgmlType::Q4K => {
            let mut out = Vec::with_capacity(bytes.len() / 144 * QK_K);
            for block in bytes.chunks_exact(144) {
                let d = half(&block[0..2]);
                let dmin = half(&block[2..4]);
                let (scales, mins) = k_scales_and_mins(&block[4..16]);
                let codes = &block[16..];
                // Four chunks of 64 values: 32 low nibbles then 32 high nibbles of 32 bytes.
                for chunk in 0..4 {
                    let bytes = &codes[chunk * 32..chunk * 32 + 32];
                    for (half_index, shift) in [(0, 0), (1, 4)] {
                        let sub = chunk * 2 + half_index;
                        let scale = d * scales[sub] as f32;
                        let offset = dmin * mins[sub] as f32;
                        out.extend(
                            bytes
                                .iter()
                                .map(|&q| scale * ((q >> shift) & 0x0F) as f32 - offset),
                        );
                    }
                }
            }
            out
        }
        GgmlType::Q6K => {
            let mut out = Vec::with_capacity(bytes.len() / 210 * QK_K);
            for block in bytes.chunks_exact(210) {
                let low = &block[0..128];
                let high = &block[128..192];
                let scales = &block[192..208];
                let d = half(&block[208..210]);
                let mut values = [0f32; QK_K];
                // Two halves of 128 values; in each, four groups of 32 take their low four bits
                // from 64 bytes of `low` and their top two from 32 bytes of `high`.
                for half_index in 0..2 {
                    let low = &low[half_index * 64..half_index * 64 + 64];
                    let high = &high[half_index * 32..half_index * 32 + 32];
                    for l in 0..32 {
                        let codes = [
                            (low[l] & 0x0F) | ((high[l] & 0x03) << 4),
                            (low[l + 32] & 0x0F) | (((high[l] >> 2) & 0x03) << 4),
                            (low[l] >> 4) | (((high[l] >> 4) & 0x03) << 4),
                            (low[l + 32] >> 4) | (((high[l] >> 6) & 0x03) << 4),
                        ];
                        for (group, &code) in codes.iter().enumerate() {
                            let index = half_index * 128 + group * 32 + l;
                            // One signed scale per 16 values.
                            let scale = d * (scales[index / 16] as i8) as f32;
                            values[index] = scale * (code as i8 - 32) as f32;
                        }
                    }
                }
                out.extend_from_slice(&values);
            }
            out
        }
        GgmlType::Other(..) => unreachable!("callers check the type first"),
    }
}

/// The eight 6-bit scales and mins of a Q4_K super-block, packed in 12 bytes.
fn k_scales_and_mins(packed: &[u8]) -> ([u8; 8], [u8; 8]) {
    let mut scales = [0u8; 8];
    let mut mins = [0u8; 8];
    for j in 0..4 {
        scales[j] = packed[j] & 0x3F;
        mins[j] = packed[j + 4] & 0x3F;
        scales[j + 4] = (packed[j + 8] & 0x0F) | ((packed[j] >> 6) << 4);
        mins[j + 4] = (packed[j + 8] >> 4) | ((packed[j + 4] >> 6) << 4);
    }
    (scales, mins)
}

/// llama.cpp's tensor names for the Llama family and the Hugging Face names they load as
/// (`N` is the layer index).
const TENSOR_NAMES: [(&str, &str); 13] = [
    ("attn_norm.weight", "input_layernorm.weight"),
    ("ffn_norm.weight", "post_attention_layernorm.weight"),
    ("attn_q.weight", "self_attn.q_proj.weight"),
    ("attn_q.bias", "self_attn.q_proj.bias"),
    ("attn_k.weight", "self_attn.k_proj.weight"),
    ("attn_k.bias", "self_attn.k_proj.bias"),
    ("attn_v.weight", "self_attn.v_proj.weight"),
    ("attn_v.bias", "self_attn.v_proj.bias"),
    ("attn_output.weight", "self_attn.o_proj.weight"),
    ("attn_output.bias", "self_attn.o_proj.bias"),
    ("ffn_gate.weight", "mlp.gate_proj.weight"),
    ("ffn_up.weight", "mlp.up_proj.weight"),
    ("ffn_down.weight", "mlp.down_proj.weight"),
];

/// The Hugging Face name of a llama.cpp tensor name, if it is one the Llama family has.
pub(crate) fn hf_name(name: &str) -> Option<String> {
    match name {
        "token_embd.weight" => return Some("model.embed_tokens.weight".into()),
        "output_norm.weight" => return Some("model.norm.weight".into()),
        "output.weight" => return Some("lm_head.weight".into()),
        _ => {}
    }
    let rest = name.strip_prefix("blk.")?;
    let (layer, suffix) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    TENSOR_NAMES
        .iter()
        .find(|(gguf, _)| *gguf == suffix)
        .map(|(_, hf)| format!("model.layers.{layer}.{hf}"))
}

/// Undo llama.cpp's rotary interleave of q/k rows: its converter stores Hugging Face row
/// `(head, half, i)` at `(head, i, half)`, so that ggml's rope rotates adjacent pairs.
/// `values` is row-major with `row_len` values per row (1 for a bias).
pub(crate) fn unpermute_rows(values: &[f32], heads: usize, row_len: usize) -> Vec<f32> {
    let rows = values.len() / row_len;
    let per_head = rows / heads;
    let half = per_head / 2;
    let mut out = vec![0f32; values.len()];
    for head in 0..heads {
        for side in 0..2 {
            for i in 0..half {
                let hf_row = head * per_head + side * half + i;
                let gguf_row = head * per_head + i * 2 + side;
                out[hf_row * row_len..(hf_row + 1) * row_len]
                    .copy_from_slice(&values[gguf_row * row_len..(gguf_row + 1) * row_len]);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_to_hugging_face() {
        assert_eq!(
            hf_name("blk.12.ffn_down.weight").as_deref(),
            Some("model.layers.12.mlp.down_proj.weight")
        );
        assert_eq!(
            hf_name("token_embd.weight").as_deref(),
            Some("model.embed_tokens.weight")
        );
        assert_eq!(hf_name("blk.x.ffn_down.weight"), None);
        assert_eq!(hf_name("rope_freqs.weight"), None);
    }

    #[test]
    fn unpermute_inverts_the_converters_interleave() {
        // Two heads of four rows (two pairs), rows of 3 values: HF row r holds r.
        let heads = 2;
        let hf: Vec<f32> = (0..8).flat_map(|r| [r as f32; 3]).collect();
        // The converter's permute: reshape (heads, 2, half, ..) then swap the middle axes.
        let mut gguf = vec![0f32; hf.len()];
        for head in 0..heads {
            for side in 0..2 {
                for i in 0..2 {
                    let from = head * 4 + side * 2 + i;
                    let to = head * 4 + i * 2 + side;
                    gguf[to * 3..to * 3 + 3].copy_from_slice(&hf[from * 3..from * 3 + 3]);
                }
            }
        }
        assert_ne!(gguf, hf);
        assert_eq!(unpermute_rows(&gguf, heads, 3), hf);
    }

    #[test]
    fn q4_k_scales_unpack_six_bits() {
        let mut packed = [0u8; 12];
        packed[0] = 0b11_000101; // scale 0 = 5, top bits 3 go to scale 4
        packed[4] = 0b01_000111; // min 0 = 7, top bits 1 go to min 4
        packed[8] = 0x9A; // scale 4 low = 0xA, min 4 low = 0x9
        let (scales, mins) = k_scales_and_mins(&packed);
        assert_eq!((scales[0], mins[0]), (5, 7));
        assert_eq!(scales[4], 0x0A | (3 << 4));
        assert_eq!(mins[4], 0x09 | (1 << 4));
    }
}
