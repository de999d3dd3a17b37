//! What an eBPF object is made of that depends on its sources but not on how the compiler
//! generates code: its programs (ELF section and function name), its maps (type, key and value
//! size, max_entries, flags), its license, and the BTF layouts of the structs it shares with
//! user space. Two builds of the same sources by different clang versions have different bytes
//! but the same shape; a change to the sources that matters to the loader or to user space
//! changes the shape.
//!
//! aya-obj reads programs, maps and the license as aya itself does; `object` gives the section
//! names aya-obj folds into program kinds; btf-rs reads struct members, which aya-obj keeps
//! private.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use object::{Object as _, ObjectSection as _};

/// One program: the ELF section it is in (its attach point, e.g. `tp_btf/sched_process_exec`)
/// and its function's name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ProgramShape {
    pub section: String,
    pub function: String,
}

impl fmt::Display for ProgramShape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} in section {}", self.function, self.section)
    }
}

/// A map's definition as the loader creates it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapShape {
    pub map_type: u32,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
    pub flags: u32,
}

/// One member of a struct: its name, where it starts (in bits, as BTF says) and how many bytes
/// its type takes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberShape {
    pub name: String,
    pub bit_offset: u32,
    pub bitfield_bits: Option<u32>,
    pub size: usize,
}

impl fmt::Display for MemberShape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}@{} ({} bytes",
            self.name,
            self.bit_offset / 8,
            self.size
        )?;
        if !self.bit_offset.is_multiple_of(8) {
            write!(f, ", bit {}", self.bit_offset)?;
        }
        if let Some(bits) = self.bitfield_bits.filter(|b| *b != 0) {
            write!(f, ", {bits}-bit field")?;
        }
        write!(f, ")")
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StructShape {
    pub size: usize,
    pub members: Vec<MemberShape>,
}

impl fmt::Display for StructShape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let members: Vec<String> = self.members.iter().map(|m| m.to_string()).collect();
        write!(f, "{} bytes {{{}}}", self.size, members.join(", "))
    }
}

/// The compiler-independent part of an object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectShape {
    pub programs: BTreeSet<ProgramShape>,
    pub maps: BTreeMap<String, MapShape>,
    pub license: String,
    pub structs: BTreeMap<String, StructShape>,
}

#[derive(Debug, thiserror::Error)]
pub enum ShapeError {
    #[error("not an ELF object: {0}")]
    Elf(#[from] object::Error),
    #[error("aya cannot read it: {0}")]
    Aya(#[from] aya_obj::ParseError),
    #[error("it has no .BTF section")]
    NoBtf,
    #[error("its BTF does not parse: {0}")]
    Btf(#[from] btf_rs::Error),
    #[error("program {function} is in section {index}, which the ELF file does not have")]
    NoSection { function: String, index: usize },
    #[error(
        "struct {0} is not in its BTF: clang writes BTF only for the types that functions, \
         globals and maps name (see gl_record_types in guardlab.bpf.c)"
    )]
    MissingStruct(String),
    #[error("struct {name}: member {member}: {why}")]
    Member {
        name: String,
        member: String,
        why: String,
    },
}

/// The names of the structs `header` (C, like guardlab.h) defines: every line that starts
/// with `struct NAME {`.
pub fn defined_structs(header: &str) -> Vec<String> {
    header
        .lines()
        .filter_map(|line| {
            let rest = line.strip_prefix("struct ")?;
            let (name, after) = rest.split_once(' ')?;
            (after.trim_start().starts_with('{')
                && !name.is_empty()
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
            .then(|| name.to_string())
        })
        .collect()
}

/// The shape of the object `bytes`, with the layouts of the structs named `shared` (each must
/// be in its BTF).
pub fn shape_of(bytes: &[u8], shared: &[String]) -> Result<ObjectShape, ShapeError> {
    let elf = object::File::parse(bytes)?;
    let obj = aya_obj::Object::parse(bytes)?;

    let mut programs = BTreeSet::new();
    for (function, program) in &obj.programs {
        let section = elf
            .section_by_index(object::SectionIndex(program.section_index))
            .and_then(|s| s.name().map(str::to_string))
            .map_err(|_| ShapeError::NoSection {
                function: function.clone(),
                index: program.section_index,
            })?;
        programs.insert(ProgramShape {
            section,
            function: function.clone(),
        });
    }

    let maps = obj
        .maps
        .iter()
        .map(|(name, map)| {
            (
                name.clone(),
                MapShape {
                    map_type: map.map_type(),
                    key_size: map.key_size(),
                    value_size: map.value_size(),
                    max_entries: map.max_entries(),
                    flags: map.map_flags(),
                },
            )
        })
        .collect();

    let btf_bytes = elf
        .section_by_name(".BTF")
        .ok_or(ShapeError::NoBtf)?
        .data()?;
    let btf = btf_rs::Btf::from_bytes(btf_bytes)?;
    let mut structs = BTreeMap::new();
    for name in shared {
        structs.insert(name.clone(), struct_shape(&btf, name)?);
    }

    Ok(ObjectShape {
        programs,
        maps,
        license: obj.license.to_string_lossy().into_owned(),
        structs,
    })
}

fn struct_shape(btf: &btf_rs::Btf, name: &str) -> Result<StructShape, ShapeError> {
    let found = btf
        .resolve_types_by_name(name)
        .unwrap_or_default()
        .into_iter()
        .find_map(|t| match t {
            btf_rs::Type::Struct(s) => Some(s),
            _ => None,
        })
        .ok_or_else(|| ShapeError::MissingStruct(name.to_string()))?;
    let mut members = Vec::with_capacity(found.members.len());
    for member in &found.members {
        let member_name = btf.resolve_name(member).unwrap_or_default();
        let why = |why: String| ShapeError::Member {
            name: name.to_string(),
            member: member_name.clone(),
            why,
        };
        let ty = btf
            .resolve_chained_type(member)
            .map_err(|e| why(e.to_string()))?;
        members.push(MemberShape {
            size: type_size(btf, &ty).map_err(why)?,
            name: member_name.clone(),
            bit_offset: member.bit_offset(),
            bitfield_bits: member.bitfield_size(),
        });
    }
    Ok(StructShape {
        size: found.size(),
        members,
    })
}

/// The size in bytes of a member's type: typedefs and qualifiers followed, arrays multiplied.
fn type_size(btf: &btf_rs::Btf, ty: &btf_rs::Type) -> Result<usize, String> {
    use btf_rs::Type;
    let mut ty = ty.clone();
    // Typedef chains are short; the bound only guards against a malformed loop.
    for _ in 0..32 {
        ty = match &ty {
            Type::Int(i) => return Ok(i.size()),
            Type::Struct(s) | Type::Union(s) => return Ok(s.size()),
            Type::Enum(e) => return Ok(e.size()),
            Type::Enum64(e) => return Ok(e.size()),
            Type::Float(f) => return Ok(f.size()),
            Type::Ptr(_) => return Ok(8),
            Type::Array(a) => {
                let element = btf.resolve_chained_type(a).map_err(|e| e.to_string())?;
                return Ok(a.len() * type_size(btf, &element)?);
            }
            Type::Typedef(t) => btf.resolve_chained_type(t),
            Type::Const(t) => btf.resolve_chained_type(t),
            Type::Volatile(t) => btf.resolve_chained_type(t),
            Type::Restrict(t) => btf.resolve_chained_type(t),
            Type::TypeTag(t) => btf.resolve_chained_type(t),
            other => return Err(format!("a member of kind {} has no size", other.name())),
        }
        .map_err(|e| e.to_string())?;
    }
    Err("its type is a chain of more than 32 typedefs or qualifiers".into())
}

/// What differs between `committed` and `fresh`, one line each, naming the program, map or
/// struct. Empty when they have the same shape.
pub fn differences(committed: &ObjectShape, fresh: &ObjectShape) -> Vec<String> {
    let mut out = Vec::new();
    for p in committed.programs.difference(&fresh.programs) {
        out.push(format!("program {p}: in the committed object only"));
    }
    for p in fresh.programs.difference(&committed.programs) {
        out.push(format!("program {p}: in the fresh build only"));
    }

    let names: BTreeSet<&String> = committed.maps.keys().chain(fresh.maps.keys()).collect();
    for name in names {
        match (committed.maps.get(name), fresh.maps.get(name)) {
            (Some(_), None) => out.push(format!("map {name}: in the committed object only")),
            (None, Some(_)) => out.push(format!("map {name}: in the fresh build only")),
            (Some(c), Some(f)) => {
                let fields = [
                    ("type", c.map_type, f.map_type),
                    ("key size", c.key_size, f.key_size),
                    ("value size", c.value_size, f.value_size),
                    ("max_entries", c.max_entries, f.max_entries),
                    ("flags", c.flags, f.flags),
                ];
                for (field, c, f) in fields {
                    if c != f {
                        out.push(format!(
                            "map {name}: {field} {c} in the committed object, {f} in the fresh build"
                        ));
                    }
                }
            }
            (None, None) => unreachable!("the name comes from one of them"),
        }
    }

    if committed.license != fresh.license {
        out.push(format!(
            "license: {:?} in the committed object, {:?} in the fresh build",
            committed.license, fresh.license
        ));
    }

    let names: BTreeSet<&String> = committed
        .structs
        .keys()
        .chain(fresh.structs.keys())
        .collect();
    for name in names {
        match (committed.structs.get(name), fresh.structs.get(name)) {
            (Some(c), Some(f)) if c != f => out.push(format!(
                "struct {name}: {c} in the committed object, {f} in the fresh build"
            )),
            (Some(_), None) => out.push(format!("struct {name}: in the committed object only")),
            (None, Some(_)) => out.push(format!("struct {name}: in the fresh build only")),
            _ => {}
        }
    }
    out
}
