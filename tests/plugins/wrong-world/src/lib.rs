//! A real component, but for a world that is not `weir:plugin/plugin`.
#![allow(unsafe_code)] // generated export glue

wit_bindgen::generate!({
    inline: "package test:other; world other { export run: func() -> u32; }",
});

struct Other;

impl Guest for Other {
    fn run() -> u32 {
        7
    }
}

export!(Other);
