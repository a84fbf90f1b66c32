//! `#[derive(DataView)]`: one `#[root]` field and any number of `#[join]`
//! fields become `DataView::spec` and `DataView::load`.

use proc_macro2::TokenStream;
use quote::{quote, quote_spanned};
use syn::parse::ParseStream;
use syn::spanned::Spanned;
use syn::{
    Attribute, Data, DeriveInput, Field, Fields, GenericArgument, Ident, LitStr, Meta, PathArguments, Token,
    Type,
};

use crate::errors::Errors;

mod kw {
    syn::custom_keyword!(model);
    syn::custom_keyword!(on);
    syn::custom_keyword!(via);
}

const VALID_ROOT_KEYS: &str = "`model = \"...\"` (the root's model, when its type does not derive `Record`)";
const VALID_JOIN_KEYS: &str = "`on = \"field\"` (records of the joined model whose `field` points at the root), \
                               `via = \"field\"` (the records the root's `field` points at), \
                               `model = \"...\"` (the joined model, when the type does not derive `Record`)";

/// One `key = "value"` of `#[root(..)]` or `#[join(..)]`.
enum FieldArg {
    Model(kw::model, LitStr),
    On(kw::on, LitStr),
    Via(kw::via, LitStr),
}

/// Which attribute is being parsed, for the valid keys and messages.
#[derive(Clone, Copy, PartialEq, Eq)]
enum AttrKind {
    Root,
    Join,
}

impl AttrKind {
    fn name(self) -> &'static str {
        match self {
            AttrKind::Root => "root",
            AttrKind::Join => "join",
        }
    }

    fn valid_keys(self) -> &'static str {
        match self {
            AttrKind::Root => VALID_ROOT_KEYS,
            AttrKind::Join => VALID_JOIN_KEYS,
        }
    }
}

/// The arguments of one `#[root(..)]` / `#[join(..)]`.
struct FieldArgs(Vec<FieldArg>);

fn parse_field_args(input: ParseStream<'_>, kind: AttrKind) -> syn::Result<FieldArgs> {
    let mut args = Vec::new();
    while !input.is_empty() {
        let arg = if input.peek(kw::model) {
            let key = input.parse()?;
            FieldArg::Model(key, value(input, "model", "\"ledger_entries\"")?)
        } else if kind == AttrKind::Join && input.peek(kw::on) {
            let key = input.parse()?;
            FieldArg::On(key, value(input, "on", "\"transfer_id\"")?)
        } else if kind == AttrKind::Join && input.peek(kw::via) {
            let key = input.parse()?;
            FieldArg::Via(key, value(input, "via", "\"payment_id\"")?)
        } else {
            let unknown: proc_macro2::TokenTree = input.parse()?;
            return Err(syn::Error::new(
                unknown.span(),
                format!(
                    "unknown key `{unknown}` in #[{}(..)]; valid keys are {}",
                    kind.name(),
                    kind.valid_keys()
                ),
            ));
        };
        args.push(arg);
        if input.is_empty() {
            break;
        }
        input.parse::<Token![,]>()?;
    }
    Ok(FieldArgs(args))
}

/// `= "non-empty string"`.
fn value(input: ParseStream<'_>, key: &str, example: &str) -> syn::Result<LitStr> {
    input.parse::<Token![=]>()?;
    if !input.peek(LitStr) {
        return Err(input.error(format!(
            "`{key}` takes a string literal, e.g. `{key} = {example}`"
        )));
    }
    let lit: LitStr = input.parse()?;
    if lit.value().trim().is_empty() {
        return Err(syn::Error::new(lit.span(), format!("`{key}` must not be empty")));
    }
    Ok(lit)
}

/// How many joined records a field holds.
enum Cardinality {
    /// `Vec<T>`: all of them.
    All,
    /// `Option<T>`: at most one.
    Optional,
    /// `T`: exactly one.
    One,
}

/// Splits `Vec<T>` / `Option<T>` / `T` into the cardinality and `T`.
fn element(ty: &Type) -> (Cardinality, &Type) {
    if let Type::Path(path) = ty
        && path.qself.is_none()
        && let Some(last) = path.path.segments.last()
        && let PathArguments::AngleBracketed(args) = &last.arguments
        && args.args.len() == 1
        && let Some(GenericArgument::Type(inner)) = args.args.first()
    {
        if last.ident == "Vec" {
            return (Cardinality::All, inner);
        }
        if last.ident == "Option" {
            return (Cardinality::Optional, inner);
        }
    }
    (Cardinality::One, ty)
}

/// Which way a join goes, with the field that holds the reference.
enum Link {
    /// `on = "field"`: records whose `field` points at the root.
    On(LitStr),
    /// `via = "field"`: the records the root's `field` points at.
    Via(LitStr),
}

/// What one field of the view is.
enum Role {
    Root { model: Option<LitStr> },
    Join { model: Option<LitStr>, link: Link },
}

/// A field with its role.
struct ViewField<'a> {
    field: &'a Field,
    ident: &'a Ident,
    role: Role,
}

/// Reads the `#[root]` / `#[join]` attributes of one field.
fn field_role<'a>(field: &'a Field, errors: &mut Errors) -> Option<(Role, &'a Attribute)> {
    let mut found: Option<(Role, &Attribute, &'static str)> = None;
    for attr in &field.attrs {
        let kind = if attr.path().is_ident("root") {
            AttrKind::Root
        } else if attr.path().is_ident("join") {
            AttrKind::Join
        } else {
            continue;
        };
        if let Some((_, _, first)) = &found {
            errors.push(syn::Error::new_spanned(
                attr,
                format!(
                    "a field of a data view is either `#[root]` or one `#[join(..)]`; this one is already `#[{first}]`"
                ),
            ));
            continue;
        }
        let Some(args) = errors.ok(attr_args(attr, kind)) else {
            continue;
        };
        if let Some(role) = role_from(attr, kind, args, errors) {
            found = Some((role, attr, kind.name()));
        }
    }
    found.map(|(role, attr, _)| (role, attr))
}

fn attr_args(attr: &Attribute, kind: AttrKind) -> syn::Result<FieldArgs> {
    match &attr.meta {
        Meta::Path(_) => Ok(FieldArgs(Vec::new())),
        Meta::List(list) => list.parse_args_with(|input: ParseStream<'_>| parse_field_args(input, kind)),
        Meta::NameValue(nv) => Err(syn::Error::new(
            nv.eq_token.span,
            match kind {
                AttrKind::Root => "write `#[root]`, or `#[root(model = \"...\")]`",
                AttrKind::Join => "write `#[join(on = \"field\")]` or `#[join(via = \"field\")]`",
            },
        )),
    }
}

fn role_from(attr: &Attribute, kind: AttrKind, args: FieldArgs, errors: &mut Errors) -> Option<Role> {
    let mut model: Option<LitStr> = None;
    let mut link: Option<Link> = None;
    let mut ok = true;
    for arg in args.0 {
        match arg {
            FieldArg::Model(key, lit) => {
                if model.is_some() {
                    errors.push(syn::Error::new(key.span, "duplicate key `model`"));
                    ok = false;
                }
                model = Some(lit);
            }
            FieldArg::On(key, lit) => match &link {
                Some(Link::On(_)) => {
                    errors.push(syn::Error::new(key.span, "duplicate key `on`"));
                    ok = false;
                }
                Some(Link::Via(_)) => {
                    errors.push(syn::Error::new(
                        key.span,
                        "a join is either `on = \"..\"` (records pointing at the root) \
                             or `via = \"..\"` (records the root points at), not both",
                    ));
                    ok = false;
                }
                None => link = Some(Link::On(lit)),
            },
            FieldArg::Via(key, lit) => match &link {
                Some(Link::Via(_)) => {
                    errors.push(syn::Error::new(key.span, "duplicate key `via`"));
                    ok = false;
                }
                Some(Link::On(_)) => {
                    errors.push(syn::Error::new(
                        key.span,
                        "a join is either `on = \"..\"` (records pointing at the root) \
                         or `via = \"..\"` (records the root points at), not both",
                    ));
                    ok = false;
                }
                None => link = Some(Link::Via(lit)),
            },
        }
    }
    if !ok {
        return None;
    }
    match kind {
        AttrKind::Root => Some(Role::Root { model }),
        AttrKind::Join => match link {
            Some(link) => Some(Role::Join { model, link }),
            None => {
                errors.push(syn::Error::new_spanned(
                    attr,
                    "a join needs `on = \"field\"` (the joined records' `field` points at the root) \
                     or `via = \"field\"` (the root's `field` points at the joined records), \
                     e.g. `#[join(on = \"transfer_id\")]`",
                ));
                None
            }
        },
    }
}

/// Expands `#[derive(DataView)]`.
pub(crate) fn expand(input: DeriveInput) -> TokenStream {
    match view_fields(&input) {
        Ok(fields) => generate(&input, &fields),
        Err(error) => {
            let error = error.to_compile_error();
            let fallback = fallback(&input);
            quote!(#error #fallback)
        }
    }
}

/// Finds the root and the joins, reporting every problem.
fn view_fields(input: &DeriveInput) -> syn::Result<Vec<ViewField<'_>>> {
    let fields = match &input.data {
        Data::Struct(data) => match &data.fields {
            Fields::Named(named) => &named.named,
            Fields::Unnamed(_) | Fields::Unit => {
                return Err(syn::Error::new(
                    input.ident.span(),
                    "`DataView` can only be derived for a struct with named fields: \
                     one `#[root]` field and any number of `#[join(..)]` fields",
                ));
            }
        },
        Data::Enum(data) => {
            return Err(syn::Error::new(
                data.enum_token.span,
                "`DataView` can only be derived for a struct with named fields, not an enum",
            ));
        }
        Data::Union(data) => {
            return Err(syn::Error::new(
                data.union_token.span,
                "`DataView` can only be derived for a struct with named fields, not a union",
            ));
        }
    };
    let mut errors = Errors::default();
    let mut root: Option<&Ident> = None;
    let mut out = Vec::new();
    for field in fields {
        let Some(ident) = &field.ident else { continue };
        let Some((role, attr)) = field_role(field, &mut errors) else {
            if !field
                .attrs
                .iter()
                .any(|a| a.path().is_ident("root") || a.path().is_ident("join"))
            {
                errors.push(syn::Error::new(
                    ident.span(),
                    format!(
                        "field `{ident}` of a data view needs `#[root]` (the record the view is about) \
                         or `#[join(on = \"field\")]` / `#[join(via = \"field\")]` (records joined to it)"
                    ),
                ));
            }
            continue;
        };
        let view_field = ViewField { field, ident, role };
        match &view_field.role {
            Role::Root { .. } => {
                if let Some(first) = root {
                    errors.push(syn::Error::new_spanned(
                        attr,
                        format!(
                            "a data view has exactly one `#[root]` field, and `{first}` is already the root; \
                             join other records with `#[join(..)]`"
                        ),
                    ));
                    continue;
                }
                if let (Cardinality::All | Cardinality::Optional, _) = element(&field.ty) {
                    errors.push(syn::Error::new_spanned(
                        &field.ty,
                        "the `#[root]` field holds the root record itself: use the record's type, \
                         not `Vec<..>` or `Option<..>` (a missing root makes the view indeterminate)",
                    ));
                }
                root = Some(ident);
            }
            Role::Join { .. } => {}
        }
        out.push(view_field);
    }
    if root.is_none()
        && fields
            .iter()
            .all(|f| !f.attrs.iter().any(|a| a.path().is_ident("root")))
    {
        errors.push(syn::Error::new(
            input.ident.span(),
            "a data view needs exactly one `#[root]` field: the record the view is about, \
             e.g. `#[root] transfer: Transfer`",
        ));
    }
    errors.finish()?;
    Ok(out)
}

/// The model of a field's records: the literal, or `<T as Record>::MODEL`
/// spanned at the type (so a type without `Record` is reported there).
fn model_of(model: &Option<LitStr>, ty: &Type) -> TokenStream {
    match model {
        Some(lit) => quote!(#lit),
        None => quote_spanned!(ty.span()=> <#ty as ::overseer_core::view::Record>::MODEL),
    }
}

fn generate(input: &DeriveInput, fields: &[ViewField<'_>]) -> TokenStream {
    let ident = &input.ident;
    let (impl_generics, ty_generics, where_clause) = input.generics.split_for_impl();
    let mut root_model = None;
    let mut specs = Vec::new();
    let mut inits = Vec::new();

    // Methods and their `.await` are spanned at the field's type, so that an
    // unmet bound (`DeserializeOwned`, `Record`) is reported there.
    let method = |name: &str, ty: &Type| Ident::new(name, ty.span());
    for field in fields {
        let field_ident = field.ident;
        match &field.role {
            Role::Root { model } => {
                let ty = &field.field.ty;
                root_model = Some(model_of(model, ty));
                let root_as = method("root_as", ty);
                let await_root = quote_spanned!(ty.span()=> .await?);
                inits.push(quote!(#field_ident: ctx.#root_as::<#ty>() #await_root));
            }
            Role::Join { model, link } => {
                let (cardinality, elem) = element(&field.field.ty);
                let model = model_of(model, elem);
                let await_join = quote_spanned!(elem.span()=> .await?);
                let (direction, on, load) = match link {
                    Link::On(on) => {
                        let referrers_as = method("referrers_as", elem);
                        (
                            quote!(Referrers),
                            on,
                            quote!(ctx.#referrers_as::<#elem>(#model, #on) #await_join),
                        )
                    }
                    Link::Via(via) => {
                        let referenced_as = method("referenced_as", elem);
                        (
                            quote!(Referenced),
                            via,
                            quote!(ctx.#referenced_as::<#elem>(#via, #model) #await_join),
                        )
                    }
                };
                let value = match cardinality {
                    Cardinality::All => load,
                    Cardinality::Optional => quote!(ctx.optional(#model, #load)?),
                    Cardinality::One => quote!(ctx.one(#model, #load)?),
                };
                inits.push(quote!(#field_ident: #value));
                specs.push(quote! {
                    ::overseer_core::view::JoinSpec {
                        model: #model,
                        on: #on,
                        direction: ::overseer_core::view::JoinDirection::#direction,
                    }
                });
            }
        }
    }
    let root_model = root_model.unwrap_or_else(|| quote!(::core::unreachable!()));

    quote! {
        #[automatically_derived]
        impl #impl_generics ::overseer_core::DataView for #ident #ty_generics #where_clause {
            fn spec() -> ::overseer_core::view::ViewSpec {
                ::overseer_core::view::ViewSpec {
                    root: #root_model,
                    joins: ::std::vec![#(#specs),*],
                }
            }

            async fn load(
                ctx: &::overseer_core::ViewContext<'_>,
            ) -> ::core::result::Result<Self, ::overseer_core::ViewError> {
                ::core::result::Result::Ok(Self {
                    #(#inits,)*
                })
            }
        }
    }
}

/// An impl that keeps the rest of the crate compiling when the derive
/// failed, so that only the derive's own errors are reported.
fn fallback(input: &DeriveInput) -> TokenStream {
    let ident = &input.ident;
    let (impl_generics, ty_generics, where_clause) = input.generics.split_for_impl();
    quote! {
        #[automatically_derived]
        impl #impl_generics ::overseer_core::DataView for #ident #ty_generics #where_clause {
            fn spec() -> ::overseer_core::view::ViewSpec {
                ::core::unreachable!("#[derive(DataView)] failed")
            }

            async fn load(
                _: &::overseer_core::ViewContext<'_>,
            ) -> ::core::result::Result<Self, ::overseer_core::ViewError> {
                ::core::unreachable!("#[derive(DataView)] failed")
            }
        }
    }
}
