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
    /// The declared return type (`None` for `()`), with a span for the
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
        (_, _, Err(error)) => with_error(item, error),
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
        errors.push(syn::Error::new(abi.span(), "a check cannot have an `extern` ABI"));
    }
    if !sig.generics.params.is_empty() || sig.generics.where_clause.is_some() {
        let span = match &sig.generics.where_clause {
            Some(w) if sig.generics.params.is_empty() => w.span(),
            _ => sig.generics.span(),
        };
        errors.push(syn::Error::new(
            span,
            "a check cannot be generic: it is registered once, so its view type must be concrete",
        ));
    }
    if let Some(variadic) = &sig.variadic {
        errors.push(syn::Error::new(variadic.span(), "a check cannot be variadic"));
    }
    let mut view = None;
    match sig.inputs.len() {
        0 => errors.push(syn::Error::new(
            sig.paren_token.span.join(),
            "a check takes exactly one argument, its data view: \
             e.g. `(view: TransferView)` where `TransferView` derives `DataView`",
        )),
        n => {
            if n > 1 {
                let extra = sig.inputs.iter().skip(1).map(|a| a.span());
                let span = extra
                    .reduce(|a, b| a.join(b).unwrap_or(a))
                    .unwrap_or_else(Span::call_site);
                errors.push(syn::Error::new(
                    span,
                    "a check takes exactly one argument, its data view: \
                     put everything it reads into one struct that derives `DataView`",
                ));
            }
            match &sig.inputs[0] {
                FnArg::Receiver(receiver) => errors.push(syn::Error::new(
                    receiver.span(),
                    "a check cannot take `self`: write a free `async fn` that takes its data view",
                )),
                FnArg::Typed(arg) => view = Some(arg.ty.clone()),
            }
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

/// Whether a type mentions `impl Trait` (which cannot appear in a bound).
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
    let view_assertion = format_ident!("__overseer_check_{}_takes_a_data_view", plain);
    let verdict_assertion = format_ident!("__overseer_check_{}_returns_a_verdict", plain);

    let name = match &options.name {
        Some(name) => quote!(#name),
        None => {
            let plain = plain.to_string();
            quote!(::core::concat!(::core::module_path!(), "::", #plain))
        }
    };
    let calls = options.builder_calls();
    let line = quote_spanned!(ident.span()=> ::core::line!());

    let view = &signature.view;
    let view_check = quote_spanned! {view.span()=>
        #[doc(hidden)]
        #[allow(non_snake_case, dead_code, clippy::all)]
        fn #view_assertion() where #view: ::overseer_core::DataView {}
    };
    let verdict_check = match &signature.output {
        Some(output) if !has_impl_trait(output) => quote_spanned! {output.span()=>
            #[doc(hidden)]
            #[allow(non_snake_case, dead_code, clippy::all)]
            fn #verdict_assertion() where #output: ::overseer_core::check::IntoVerdict {}
        },
        Some(_) => TokenStream::new(),
        None => quote_spanned! {func.sig.ident.span()=>
            #[doc(hidden)]
            #[allow(non_snake_case, dead_code, clippy::all)]
            fn #verdict_assertion() where (): ::overseer_core::check::IntoVerdict {}
        },
    };

    quote! {
        #func

        #view_check
        #verdict_check

        #[doc(hidden)]
        #[allow(non_snake_case)]
        fn #builder() -> ::overseer_core::Check {
            ::overseer_core::Check::new(#name, #ident)
                .at(::core::module_path!(), ::core::file!(), #line)
                #calls
        }

        ::overseer_core::__private::inventory::submit! {
            ::overseer_core::__private::CheckRegistration { build: #builder }
        }
    }
}
