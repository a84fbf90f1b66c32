//! `#[derive(Record)]` with `#[record(model = "...")]`: binds a type to the
//! model whose records deserialize into it.

use proc_macro2::TokenStream;
use quote::quote;
use syn::parse::{Parse, ParseStream};
use syn::{DeriveInput, LitStr, Meta, Token};

use crate::errors::Errors;

mod kw {
    syn::custom_keyword!(model);
}

/// The arguments of `#[record(..)]`.
struct RecordArgs {
    model: LitStr,
}

impl Parse for RecordArgs {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let mut model: Option<LitStr> = None;
        while !input.is_empty() {
            if input.peek(kw::model) {
                let key: kw::model = input.parse()?;
                input.parse::<Token![=]>()?;
                if !input.peek(LitStr) {
                    return Err(input.error("`model` takes a string literal, e.g. `model = \"transfers\"`"));
                }
                let lit: LitStr = input.parse()?;
                if model.is_some() {
                    return Err(syn::Error::new(key.span, "duplicate key `model`"));
                }
                if lit.value().trim().is_empty() {
                    return Err(syn::Error::new(lit.span(), "the model name must not be empty"));
                }
                model = Some(lit);
            } else {
                let unknown: proc_macro2::TokenTree = input.parse()?;
                return Err(syn::Error::new(
                    unknown.span(),
                    format!("unknown key `{unknown}` in #[record(..)]; the valid key is `model = \"...\"`"),
                ));
            }
            if input.is_empty() {
                break;
            }
            input.parse::<Token![,]>()?;
        }
        model
            .map(|model| RecordArgs { model })
            .ok_or_else(|| input.error("#[record(..)] needs the model: `#[record(model = \"transfers\")]`"))
    }
}

/// Expands `#[derive(Record)]`.
pub(crate) fn expand(input: DeriveInput) -> TokenStream {
    let ident = &input.ident;
    let (impl_generics, ty_generics, where_clause) = input.generics.split_for_impl();
    let (model, error) = match model(&input) {
        Ok(model) => (quote!(#model), None),
        Err(error) => (quote!(""), Some(error.to_compile_error())),
    };
    quote! {
        #error
        #[automatically_derived]
        impl #impl_generics ::overseer_core::view::Record for #ident #ty_generics #where_clause {
            const MODEL: &'static str = #model;
        }
    }
}

/// The model named by the one `#[record(model = "...")]`.
fn model(input: &DeriveInput) -> syn::Result<LitStr> {
    let mut errors = Errors::default();
    let mut found: Option<LitStr> = None;
    for attr in input.attrs.iter().filter(|a| a.path().is_ident("record")) {
        let args = match &attr.meta {
            Meta::List(_) => attr.parse_args::<RecordArgs>(),
            _ => Err(syn::Error::new_spanned(
                attr,
                "write `#[record(model = \"...\")]`, e.g. `#[record(model = \"transfers\")]`",
            )),
        };
        let Some(args) = errors.ok(args) else { continue };
        if found.is_some() {
            errors.push(syn::Error::new_spanned(
                attr,
                "duplicate `#[record(..)]` attribute",
            ));
            continue;
        }
        found = Some(args.model);
    }
    errors.finish()?;
    found.ok_or_else(|| {
        syn::Error::new(
            input.ident.span(),
            format!(
                "`#[derive(Record)]` needs the model whose records `{}` reads: \
                 add `#[record(model = \"...\")]`",
                input.ident
            ),
        )
    })
}
