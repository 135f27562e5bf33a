//! `#[derive(Entity)]` for data-layer.
//!
//! Reads a named-field struct and emits `impl dl_models::Entity` with a
//! static `EntitySchema`, plus a `Debug` that prints PHI fields as
//! `<redacted>`. Every misuse is a compile error that names the field and
//! says what to write instead. See the `dl_models` crate docs for the
//! attributes.

use proc_macro::TokenStream;
use proc_macro2::{Span, TokenStream as TokenStream2};
use quote::quote;
use syn::spanned::Spanned;
use syn::{Data, DeriveInput, Fields, GenericArgument, LitInt, LitStr, PathArguments, Type};

/// Derives `dl_models::Entity`. Attributes:
///
/// - on the struct: `#[entity(name = "patients")]` (store name, default the
///   snake-case type name), `#[entity(no_debug)]` (write your own `Debug`).
/// - on fields: `#[key]` (exactly one), `#[version]` (at most one, an
///   integer), `#[indexed]` / `#[indexed(unique)]`, `#[phi]` /
///   `#[phi(drop|hash|mask|generalize)]`, `#[field(text)]` (a type that
///   serializes as a string, e.g. a unit enum), `#[field(json)]` (any serde
///   type, stored as a document), `#[field(max_len = N)]` (bytes).
///
/// The generated `Debug` prints non-PHI fields with their own `Debug` (so
/// their types must implement it) and PHI fields as `<redacted>`; do not also
/// derive `Debug`, or use `#[entity(no_debug)]` and write one that keeps PHI out.
#[proc_macro_derive(Entity, attributes(entity, key, version, indexed, phi, field))]
pub fn derive_entity(input: TokenStream) -> TokenStream {
    let input = syn::parse_macro_input!(input as DeriveInput);
    match expand(&input) {
        Ok(ts) => ts.into(),
        Err(e) => e.to_compile_error().into(),
    }
}

struct FieldSpec {
    ident: syn::Ident,
    name: String,
    ty: TokenStream2,
    rust_ty: Type,
    nullable: bool,
    indexed: bool,
    unique: bool,
    phi: Option<Option<&'static str>>,
    max_len: Option<u32>,
    key: bool,
    version: bool,
    span: Span,
}

fn err<T>(span: Span, msg: impl std::fmt::Display) -> syn::Result<T> {
    Err(syn::Error::new(span, msg))
}

fn expand(input: &DeriveInput) -> syn::Result<TokenStream2> {
    let ident = &input.ident;
    if !input.generics.params.is_empty() {
        return err(
            input.generics.span(),
            "#[derive(Entity)] needs a struct without generic parameters: its schema is static",
        );
    }
    let Data::Struct(data) = &input.data else {
        return err(
            ident.span(),
            "#[derive(Entity)] works on structs with named fields only",
        );
    };
    let Fields::Named(named) = &data.fields else {
        return err(
            ident.span(),
            "#[derive(Entity)] works on structs with named fields only",
        );
    };

    // Container attributes.
    let mut store_name = snake_case(&ident.to_string());
    let mut write_debug = true;
    for attr in &input.attrs {
        if attr.path().is_ident("entity") {
            attr.parse_nested_meta(|meta| {
                if meta.path.is_ident("name") {
                    let lit: LitStr = meta.value()?.parse()?;
                    store_name = lit.value();
                    if !valid_identifier(&store_name) {
                        return Err(meta.error(format!(
                            "entity name `{store_name}` must match [a-z_][a-z0-9_]* and be at most 48 bytes"
                        )));
                    }
                    Ok(())
                } else if meta.path.is_ident("no_debug") {
                    write_debug = false;
                    Ok(())
                } else {
                    Err(meta.error("unknown #[entity] option: expected `name = \"...\"` or `no_debug`"))
                }
            })?;
        } else if attr.path().is_ident("serde") {
            let text = attr.meta.to_token_stream_string();
            if text.contains("rename_all") || text.contains("tag") || text.contains("untagged") {
                return err(
                    attr.span(),
                    "#[serde(rename_all/tag/untagged)] changes field names: the schema uses the Rust field names, so leave them out",
                );
            }
        }
    }
    if !valid_identifier(&store_name) {
        return err(
            ident.span(),
            format!(
                "the derived entity name `{store_name}` is not a valid store name: set #[entity(name = \"...\")]"
            ),
        );
    }

    let mut specs = Vec::new();
    for field in &named.named {
        specs.push(field_spec(field)?);
    }
    if specs.is_empty() {
        return err(ident.span(), "an entity needs at least a #[key] field");
    }

    let keys: Vec<_> = specs.iter().enumerate().filter(|(_, s)| s.key).collect();
    let key_index = match keys.as_slice() {
        [] => {
            return err(
                ident.span(),
                format!("entity `{ident}` has no key: mark exactly one field #[key]"),
            );
        }
        [(i, _)] => *i,
        [_, (_, second), ..] => {
            return err(
                second.span,
                format!("entity `{ident}` has two #[key] fields: mark exactly one"),
            );
        }
    };
    let versions: Vec<_> = specs
        .iter()
        .enumerate()
        .filter(|(_, s)| s.version)
        .collect();
    let version_index = match versions.as_slice() {
        [] => None,
        [(i, _)] => Some(*i),
        [_, (_, second), ..] => {
            return err(second.span, "an entity has at most one #[version] field");
        }
    };

    let key = &specs[key_index];
    let key_ty_name = type_name_of(&key.ty);
    if !matches!(key_ty_name.as_str(), "Text" | "Int" | "Uuid") || key.nullable {
        return err(
            key.span,
            format!(
                "the key field `{}` must be a non-optional String, integer or Uuid",
                key.name
            ),
        );
    }
    match key.phi {
        Some(None) => {
            return err(
                key.span,
                format!(
                    "the key field `{}` is PHI without a redaction rule: write #[phi(hash)] so events keep a joinable token",
                    key.name
                ),
            );
        }
        Some(Some(rule)) if rule != "Hash" => {
            return err(
                key.span,
                format!(
                    "the key field `{}` can only be redacted with #[phi(hash)]: other rules lose the identity events need",
                    key.name
                ),
            );
        }
        _ => {}
    }
    if let Some(i) = version_index {
        let v = &specs[i];
        if type_name_of(&v.ty) != "Int" || v.nullable || v.key {
            return err(
                v.span,
                format!(
                    "the #[version] field `{}` must be a non-optional integer (i64) and not the key",
                    v.name
                ),
            );
        }
        if v.phi.is_some() {
            return err(v.span, "the #[version] field cannot be PHI");
        }
    }

    let field_defs = specs.iter().map(|s| {
        let name = &s.name;
        let ty = &s.ty;
        let nullable = s.nullable;
        let indexed = s.indexed || s.unique;
        let unique = s.unique;
        let sensitivity = match s.phi {
            None => quote!(::dl_models::Sensitivity::Public),
            Some(rule) => {
                let r = syn::Ident::new(rule.unwrap_or("Drop"), Span::call_site());
                quote!(::dl_models::Sensitivity::Phi(::dl_models::Redaction::#r))
            }
        };
        let max_len = match s.max_len {
            Some(n) => quote!(::core::option::Option::Some(#n)),
            None => quote!(::core::option::Option::None),
        };
        quote! {
            ::dl_models::FieldDef {
                name: #name,
                ty: #ty,
                nullable: #nullable,
                indexed: #indexed,
                unique: #unique,
                sensitivity: #sensitivity,
                max_len: #max_len,
            }
        }
    });
    let version_tokens = match version_index {
        Some(i) => quote!(::core::option::Option::Some(#i)),
        None => quote!(::core::option::Option::None),
    };
    let key_ident = &key.ident;
    let key_rust_ty = &key.rust_ty;
    let rust_name = ident.to_string();

    let debug_impl = if write_debug {
        let entries = specs.iter().map(|s| {
            let fid = &s.ident;
            let name = &s.name;
            if s.phi.is_some() {
                quote!(.field(#name, &::dl_models::Redacted))
            } else {
                quote!(.field(#name, &self.#fid))
            }
        });
        quote! {
            impl ::core::fmt::Debug for #ident {
                fn fmt(&self, f: &mut ::core::fmt::Formatter<'_>) -> ::core::fmt::Result {
                    f.debug_struct(#rust_name) #(#entries)* .finish()
                }
            }
        }
    } else {
        quote!()
    };

    Ok(quote! {
        impl ::dl_models::Entity for #ident {
            type Key = #key_rust_ty;

            fn schema() -> &'static ::dl_models::EntitySchema {
                static FIELDS: &[::dl_models::FieldDef] = &[#(#field_defs),*];
                static SCHEMA: ::dl_models::EntitySchema = ::dl_models::EntitySchema {
                    name: #store_name,
                    rust_name: #rust_name,
                    fields: FIELDS,
                    key: #key_index,
                    version: #version_tokens,
                };
                &SCHEMA
            }

            fn key(&self) -> Self::Key {
                ::core::clone::Clone::clone(&self.#key_ident)
            }
        }
        ::dl_models::inventory::submit! {
            ::dl_models::Registered {
                schema: <#ident as ::dl_models::Entity>::schema,
            }
        }
        #debug_impl
    })
}

trait MetaText {
    fn to_token_stream_string(&self) -> String;
}
impl MetaText for syn::Meta {
    fn to_token_stream_string(&self) -> String {
        quote!(#self).to_string()
    }
}

fn field_spec(field: &syn::Field) -> syn::Result<FieldSpec> {
    let ident = field.ident.clone().expect("named field");
    let name = ident.to_string();
    let span = ident.span();
    if name.starts_with("r#") || !valid_identifier(&name) {
        return err(
            span,
            format!(
                "field name `{name}` must match [a-z_][a-z0-9_]* (at most 48 bytes) to be a store column"
            ),
        );
    }
    let mut spec = FieldSpec {
        ident: ident.clone(),
        name: name.clone(),
        ty: quote!(),
        rust_ty: field.ty.clone(),
        nullable: false,
        indexed: false,
        unique: false,
        phi: None,
        max_len: None,
        key: false,
        version: false,
        span,
    };
    let mut override_ty: Option<&'static str> = None;
    for attr in &field.attrs {
        let path = attr.path();
        if path.is_ident("key") {
            require_plain(attr, "#[key] takes no arguments")?;
            spec.key = true;
        } else if path.is_ident("version") {
            require_plain(attr, "#[version] takes no arguments")?;
            spec.version = true;
        } else if path.is_ident("indexed") {
            spec.indexed = true;
            if matches!(attr.meta, syn::Meta::List(_)) {
                attr.parse_nested_meta(|meta| {
                    if meta.path.is_ident("unique") {
                        spec.unique = true;
                        Ok(())
                    } else {
                        Err(meta.error("unknown #[indexed] option: expected `unique`"))
                    }
                })?;
            }
        } else if path.is_ident("phi") {
            let mut rule = None;
            if matches!(attr.meta, syn::Meta::List(_)) {
                attr.parse_nested_meta(|meta| {
                    let r = if meta.path.is_ident("drop") {
                        "Drop"
                    } else if meta.path.is_ident("hash") {
                        "Hash"
                    } else if meta.path.is_ident("mask") {
                        "Mask"
                    } else if meta.path.is_ident("generalize") {
                        "Generalize"
                    } else {
                        return Err(meta.error(
                            "unknown redaction rule: expected drop, hash, mask or generalize",
                        ));
                    };
                    if rule.replace(r).is_some() {
                        return Err(meta.error("give one redaction rule per field"));
                    }
                    Ok(())
                })?;
            }
            spec.phi = Some(rule);
        } else if path.is_ident("field") {
            attr.parse_nested_meta(|meta| {
                if meta.path.is_ident("text") {
                    override_ty = Some("Text");
                    Ok(())
                } else if meta.path.is_ident("json") {
                    override_ty = Some("Json");
                    Ok(())
                } else if meta.path.is_ident("max_len") {
                    let lit: LitInt = meta.value()?.parse()?;
                    let n: u32 = lit.base10_parse()?;
                    if n == 0 {
                        return Err(meta.error("max_len must be at least 1"));
                    }
                    spec.max_len = Some(n);
                    Ok(())
                } else {
                    Err(meta.error("unknown #[field] option: expected text, json or max_len = N"))
                }
            })?;
        } else if path.is_ident("serde") {
            let text = attr.meta.to_token_stream_string();
            for word in ["rename", "flatten", "skip", "alias", "with"] {
                if text.contains(word) {
                    return err(
                        attr.span(),
                        format!(
                            "#[serde({word})] on field `{name}`: the schema maps fields by their Rust names one to one, so serde must too"
                        ),
                    );
                }
            }
        }
    }

    let (inner, nullable) = strip_option(&field.ty);
    spec.nullable = nullable;
    let ty_name = match override_ty {
        Some(t) => t,
        None => classify(inner).map_err(|msg| syn::Error::new(field.ty.span(), msg))?,
    };
    if spec.max_len.is_some() && !matches!(ty_name, "Text" | "Json") {
        return err(span, "max_len applies to text and json fields only");
    }
    let ty_ident = syn::Ident::new(ty_name, Span::call_site());
    spec.ty = quote!(::dl_models::FieldType::#ty_ident);
    Ok(spec)
}

fn require_plain(attr: &syn::Attribute, msg: &str) -> syn::Result<()> {
    match attr.meta {
        syn::Meta::Path(_) => Ok(()),
        _ => err(attr.span(), msg),
    }
}

fn type_name_of(ts: &TokenStream2) -> String {
    ts.to_string()
        .rsplit(' ')
        .next()
        .unwrap_or_default()
        .to_owned()
}

fn strip_option(ty: &Type) -> (&Type, bool) {
    if let Type::Path(p) = ty
        && p.qself.is_none()
        && let Some(last) = p.path.segments.last()
        && last.ident == "Option"
        && let PathArguments::AngleBracketed(args) = &last.arguments
        && args.args.len() == 1
        && let Some(GenericArgument::Type(inner)) = args.args.first()
    {
        return (inner, true);
    }
    (ty, false)
}

fn classify(ty: &Type) -> Result<&'static str, String> {
    let Type::Path(p) = ty else {
        return Err(unsupported(ty));
    };
    let Some(last) = p.path.segments.last() else {
        return Err(unsupported(ty));
    };
    let name = last.ident.to_string();
    let full: Vec<String> = p
        .path
        .segments
        .iter()
        .map(|s| s.ident.to_string())
        .collect();
    Ok(match name.as_str() {
        "String" => "Text",
        "i64" | "i32" | "i16" | "i8" | "u32" | "u16" | "u8" => "Int",
        "u64" | "usize" | "i128" | "u128" | "isize" => {
            return Err(format!(
                "`{name}` does not fit a signed 64-bit integer in every store: use i64"
            ));
        }
        "f64" | "f32" => "Float",
        "bool" => "Bool",
        "NaiveDate" => "Date",
        "DateTime" => {
            let utc = matches!(&last.arguments, PathArguments::AngleBracketed(a)
                if quote!(#a).to_string().contains("Utc"));
            if !utc {
                return Err("a timestamp field must be chrono::DateTime<Utc>".to_owned());
            }
            "Timestamp"
        }
        "Uuid" => "Uuid",
        "Value" if full.iter().any(|s| s == "serde_json") => "Json",
        "Option" => return Err("nested Option is not supported: use one Option".to_owned()),
        _ => return Err(unsupported(ty)),
    })
}

fn unsupported(ty: &Type) -> String {
    format!(
        "unsupported field type `{}`: use String, an integer up to i64, f64, bool, chrono::NaiveDate, \
         chrono::DateTime<Utc>, uuid::Uuid, serde_json::Value or Option of one of them; \
         mark a type that serializes as a string #[field(text)], any other serde type #[field(json)]",
        quote!(#ty).to_string().replace(' ', "")
    )
}

fn valid_identifier(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 48
        && b.iter()
            .enumerate()
            .all(|(i, &c)| c == b'_' || c.is_ascii_lowercase() || (i > 0 && c.is_ascii_digit()))
}

fn snake_case(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 4);
    for (i, ch) in s.chars().enumerate() {
        if ch.is_ascii_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.push(ch.to_ascii_lowercase());
        } else {
            out.push(ch);
        }
    }
    out
}
