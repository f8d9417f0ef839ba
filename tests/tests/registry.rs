//! The map registry (`foobar_lb_common::registry::MAPS`) and the built XDP object must agree on
//! every map: name, kind, key/value size, capacity and flags. A map added to the program without
//! a registry entry would be neither pinned nor checked on adoption, and lost on restart.

use foobar_lb_common::registry::{map_spec, MapKind, MAPS};

/// (name, kernel map type, key size, value size, max_entries, flags).
type MapDef = (String, u32, u32, u32, u32, u32);

/// The object's maps, section-data maps (`.rodata`, `.bss`: the program's globals) left out as
/// the registry documents.
fn object_maps() -> Option<Vec<MapDef>> {
    let bytes = match foobar_lb::dataplane::object() {
        Ok(b) => b,
        // `cargo xtask test` always builds the object; a plain `cargo test` may lack the toolchain.
        Err(e) if std::env::var_os("FOOBAR_LB_BIN").is_none() => {
            eprintln!("skipped: {e}");
            return None;
        }
        Err(e) => panic!("{e}"),
    };
    let obj = aya_obj::Object::parse(bytes).expect("the built object parses");
    let mut maps: Vec<_> = obj
        .maps
        .iter()
        .filter(|(name, _)| !name.starts_with('.'))
        .map(|(name, m)| {
            (
                name.clone(),
                m.map_type(),
                m.key_size(),
                m.value_size(),
                m.max_entries(),
                m.map_flags(),
            )
        })
        .collect();
    maps.sort();
    Some(maps)
}

#[test]
fn every_map_of_the_object_is_registered_with_its_exact_definition() {
    let Some(maps) = object_maps() else { return };
    let mut problems = Vec::new();
    for (name, kind, key, value, max, flags) in &maps {
        let Some(spec) = map_spec(name) else {
            problems.push(format!(
                "map {name} is in the object but not in foobar_lb_common::registry::MAPS: add \
                 an entry (see DEVELOPING.md, \"Adding a map\")"
            ));
            continue;
        };
        let want = (
            spec.kind.kernel_type(),
            spec.key_size,
            spec.value_size,
            spec.max_entries,
            spec.flags,
        );
        let got = (*kind, *key, *value, *max, *flags);
        if want != got {
            problems.push(format!(
                "map {name}: object has (type {:?}, key {key}, value {value}, max_entries {max}, \
                 flags {flags}), registry says (type {:?}, key {}, value {}, max_entries {}, \
                 flags {})",
                MapKind::from_kernel_type(*kind),
                spec.kind,
                want.1,
                want.2,
                want.3,
                want.4
            ));
        }
    }
    for spec in MAPS {
        if !maps.iter().any(|m| m.0 == spec.name) {
            problems.push(format!(
                "registry entry {} has no map in the object",
                spec.name
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
