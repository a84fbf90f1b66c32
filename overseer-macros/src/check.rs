//! `#[check]`: keeps the function as written and adds a hidden builder of
//! its `Check`, the inventory registration, and spanned assertions about its
//! argument and return types.

use proc_macro2::{Span, TokenStream};
use quote::{format_ident, quote, quote_spanned};
use syn::ext::IdentExt;
use syn::spanned::Spanned;
use syn::visit::Visit;
use syn::{FnArg, ItemFn, ReturnType, Signature, Type};

use crate::errors::Errors;
use crate::options::{CheckOptions, RawOptions};

/// What the expansion needs from a valid check signature.
struct CheckSignature {
    /// The type of the view argument.
    view: Box<Type>,
    /// The declared return type (`None` for `()`), named in the
    /// `IntoVerdict` assertion.
    output: Option<Box<Type>>,
}

/// Expands `#[check(args)] item`.
pub(crate) fn expand(args: TokenStream, item: TokenStream) -> TokenStream {
    let func: ItemFn = match syn::parse2(item.clone()) {
        Ok(func) => func,
        Err(_) => {
            let error = syn::Error::new(
                first_span(&item),
                "#[check] goes on an `async fn` that takes a data view, \
                 e.g. `async fn transfer_is_paid(view: TransferView) -> Verdict`",
            );
            return with_error(item, error);
        }
    };
    let mut errors = Errors::default();
    let options = errors.ok(syn::parse2::<RawOptions>(args).and_then(CheckOptions::validate));
    let signature = errors.ok(check_signature(&func.sig));
    match (options, signature, errors.finish()) {
        (Some(options), Some(signature), Ok(())) => generate(&func, &options, &signature),
        (.., Err(error)) => with_error(item, error),
        // Unreachable: `Errors::ok` records an error for every `None`.
        _ => with_error(item, syn::Error::new(Span::call_site(), "invalid #[check]")),
    }
}

/// The user's item, unchanged, plus the errors.
fn with_error(item: TokenStream, error: syn::Error) -> TokenStream {
    let error = error.to_compile_error();
    quote!(#item #error)
}

fn first_span(item: &TokenStream) -> Span {
    item.clone()
        .into_iter()
        .next()
        .map_or_else(Span::call_site, |t| t.span())
}

/// Checks the shape `async fn name(view: V) -> R`, reporting every problem.
fn check_signature(sig: &Signature) -> syn::Result<CheckSignature> {
    let mut errors = Errors::default();
    if sig.asyncness.is_none() {
        errors.push(syn::Error::new(
            sig.fn_token.span,
            format!(
                "a check must be an `async fn`: write `async fn {}(..)`",
                sig.ident.unraw()
            ),
        ));
    }
    if let Some(constness) = &sig.constness {
        errors.push(syn::Error::new(constness.span, "a check cannot be a `const fn`"));
    }
    if let Some(unsafety) = &sig.unsafety {
        errors.push(syn::Error::new(unsafety.span, "a check cannot be `unsafe`"));
    }
    if let Some(abi) = &sig.abi {
        errors.push(syn::Error::new_spanned(
            abi,
            "a check cannot have an `extern` ABI",
        ));
    }
    const GENERIC: &str =
        "a check cannot be generic: it is registered once, so its view type must be concrete";
    if !sig.generics.params.is_empty() {
        errors.push(syn::Error::new_spanned(&sig.generics, GENERIC));
    } else if let Some(where_clause) = &sig.generics.where_clause {
        errors.push(syn::Error::new_spanned(where_clause, GENERIC));
    }
    if let Some(variadic) = &sig.variadic {
        errors.push(syn::Error::new_spanned(variadic, "a check cannot be variadic"));
    }
    let mut view = None;
    let mut args = Vec::new();
    for input in &sig.inputs {
        match input {
            FnArg::Receiver(receiver) => errors.push(syn::Error::new_spanned(
                receiver,
                "a check cannot take `self`: write a free `async fn` that takes its data view",
            )),
            FnArg::Typed(arg) => args.push(arg),
        }
    }
    match args.as_slice() {
        [] if sig.receiver().is_some() => {}
        [] => errors.push(syn::Error::new(
            sig.paren_token.span.join(),
            "a check takes exactly one argument, its data view: \
             e.g. `(view: TransferView)` where `TransferView` derives `DataView`",
        )),
        [first, extra @ ..] => {
            if !extra.is_empty() {
                errors.push(syn::Error::new_spanned(
                    quote!(#(#extra),*),
                    "a check takes exactly one argument, its data view: \
                     put everything it reads into one struct that derives `DataView`",
                ));
            }
            if has_impl_trait(&first.ty) {
                errors.push(syn::Error::new_spanned(
                    &first.ty,
                    "a check cannot be generic: name its data view type instead of `impl ..`",
                ));
            }
            view = Some(first.ty.clone());
        }
    }
    let output = match &sig.output {
        ReturnType::Default => None,
        ReturnType::Type(_, ty) => Some(ty.clone()),
    };
    errors.finish()?;
    let view = view.ok_or_else(|| syn::Error::new(sig.span(), "a check takes one argument"))?;
    Ok(CheckSignature { view, output })
}

/// Whether a type mentions `impl Trait` (which cannot be named in a turbofish).
fn has_impl_trait(ty: &Type) -> bool {
    struct Finder(bool);
    impl<'ast> Visit<'ast> for Finder {
        fn visit_type_impl_trait(&mut self, _: &'ast syn::TypeImplTrait) {
            self.0 = true;
        }
    }
    let mut finder = Finder(false);
    finder.visit_type(ty);
    finder.0
}

fn generate(func: &ItemFn, options: &CheckOptions, signature: &CheckSignature) -> TokenStream {
    let ident = &func.sig.ident;
    let plain = ident.unraw();
    let builder = format_ident!("__overseer_check_{}", plain);

    let name = match &options.name {
        Some(name) => quote!(#name),
        None => {
            let plain = plain.to_string();
            quote!(::core::concat!(::core::module_path!(), "::", #plain))
        }
    };
    let calls = options.builder_calls();
    let line = quote_spanned!(ident.span()=> ::core::line!());

    // The assertions: `Check::new` requires `V: DataView` and
    // `R: IntoVerdict`; naming the user's types explicitly in its turbofish
    // makes rustc report an unmet bound (with the trait's
    // `on_unimplemented` note) at the argument's or the return type itself,
    // once, instead of at the attribute.
    //
    // The path is spanned at the function's name, so that other unmet
    // bounds (a future that is not `Send`) are reported there.
    let new = quote_spanned!(ident.span()=> ::overseer_core::Check::new);
    let infer = quote_spanned!(ident.span()=> _);
    let view = &signature.view;
    let output = match &signature.output {
        Some(output) if !has_impl_trait(output) => quote!(#output),
        Some(_) => infer.clone(),
        None => quote_spanned!(ident.span()=> ()),
    };

    quote! {
        #func

        #[doc(hidden)]
        #[allow(non_snake_case)]
        fn #builder() -> ::overseer_core::Check {
            #new::<#view, #infer, #infer, #output>(#name, #ident)
                .at(::core::module_path!(), ::core::file!(), #line)
                #calls
        }

        ::overseer_core::__private::inventory::submit! {
            ::overseer_core::__private::CheckRegistration { build: #builder }
        }
    }
}
