//! The `#[keyhole_sdk::function]` attribute: turns a plain Rust function into
//! the `run` export of the `custom-function` world.

use proc_macro::TokenStream;
use quote::quote;
use syn::{FnArg, ItemFn, ReturnType};

/// Exports `fn NAME(input: In) -> Result<Out, E>` as the plugin's `run`,
/// decoding the JSON input into `In` and encoding `Out` as JSON.
///
/// Documented, with examples, where plugins meet it: `keyhole_sdk::function`.
#[proc_macro_attribute]
pub fn function(attr: TokenStream, item: TokenStream) -> TokenStream {
    let attr = proc_macro2::TokenStream::from(attr);
    let item = syn::parse_macro_input!(item as ItemFn);
    match expand(attr, item) {
        Ok(tokens) => tokens.into(),
        Err(err) => err.to_compile_error().into(),
    }
}

fn expand(attr: proc_macro2::TokenStream, item: ItemFn) -> syn::Result<proc_macro2::TokenStream> {
    if !attr.is_empty() {
        return Err(syn::Error::new_spanned(
            attr,
            "#[keyhole_sdk::function] takes no arguments",
        ));
    }
    check_signature(&item.sig)?;

    let name = &item.sig.ident;
    let (input_ty, output_ty) = match (item.sig.inputs.first(), &item.sig.output) {
        (Some(FnArg::Typed(input)), ReturnType::Type(_, output)) => (&input.ty, output),
        _ => unreachable!("check_signature accepted the signature"),
    };
    // The checks carry the user's type tokens and so their spans: a type that
    // cannot be decoded or returned is reported on the signature.
    let checks = quote! {
        ::keyhole_sdk::__private::assert_input::<#input_ty>();
        ::keyhole_sdk::__private::assert_outcome::<#output_ty>();
    };

    Ok(quote! {
        #item

        // An anonymous const keeps the helper type and the generated export
        // glue out of the plugin's namespace.
        const _: () = {
            struct KeyholeFunction;

            impl ::keyhole_sdk::__private::Guest for KeyholeFunction {
                fn run(input: ::std::string::String)
                    -> ::std::result::Result<::std::string::String, ::std::string::String>
                {
                    #checks
                    ::keyhole_sdk::__private::run_json(&input, #name)
                }
            }

            ::keyhole_sdk::__private::__keyhole_export!(KeyholeFunction);
        };
    })
}

/// Accepts exactly `fn name(arg: In) -> Ret`: synchronous, safe, not generic,
/// one argument, a return type. Each refusal points at the offending part.
fn check_signature(sig: &syn::Signature) -> syn::Result<()> {
    if let Some(asyncness) = &sig.asyncness {
        return Err(syn::Error::new_spanned(
            asyncness,
            "a keyhole function must be synchronous; remove `async` (HTTP calls block)",
        ));
    }
    if let Some(unsafety) = &sig.unsafety {
        return Err(syn::Error::new_spanned(
            unsafety,
            "a keyhole function cannot be `unsafe`; move unsafe code into its body",
        ));
    }
    if let Some(abi) = &sig.abi {
        return Err(syn::Error::new_spanned(
            abi,
            "a keyhole function cannot declare an ABI; the macro generates the export",
        ));
    }
    if !sig.generics.params.is_empty() || sig.generics.where_clause.is_some() {
        return Err(syn::Error::new_spanned(
            &sig.generics,
            "a keyhole function cannot be generic; name concrete input and output types",
        ));
    }
    if let Some(variadic) = &sig.variadic {
        return Err(syn::Error::new_spanned(
            variadic,
            "a keyhole function cannot be variadic",
        ));
    }
    if sig.inputs.len() != 1 {
        let message = format!(
            "a keyhole function takes exactly one argument, the decoded input, found {}; \
             gather the values in one struct",
            sig.inputs.len()
        );
        return Err(if sig.inputs.is_empty() {
            syn::Error::new(sig.paren_token.span.join(), message)
        } else {
            syn::Error::new_spanned(&sig.inputs, message)
        });
    }
    if let Some(FnArg::Receiver(receiver)) = sig.inputs.first() {
        return Err(syn::Error::new_spanned(
            receiver,
            "a keyhole function is a free function; it cannot take `self`",
        ));
    }
    if let Some(FnArg::Typed(input)) = sig.inputs.first()
        && let syn::Type::ImplTrait(_) = *input.ty
    {
        return Err(syn::Error::new_spanned(
            &input.ty,
            "a keyhole function cannot be generic; name a concrete input type",
        ));
    }
    if let Some(FnArg::Typed(input)) = sig.inputs.first()
        && let syn::Type::Reference(_) = *input.ty
    {
        return Err(syn::Error::new_spanned(
            &input.ty,
            "a keyhole function takes its input by value; use an owned type such as \
             `String` instead of `&str`",
        ));
    }
    if let ReturnType::Type(_, output) = &sig.output
        && let syn::Type::ImplTrait(_) = **output
    {
        return Err(syn::Error::new_spanned(
            output,
            "a keyhole function must name its return type, e.g. `Result<Out, keyhole_sdk::Error>`",
        ));
    }
    if let ReturnType::Default = sig.output {
        return Err(syn::Error::new_spanned(
            sig,
            "a keyhole function must return `Result<Out, E>` where `Out: Serialize` and \
             `E: Display`, e.g. `-> Result<Out, keyhole_sdk::Error>`",
        ));
    }
    Ok(())
}
