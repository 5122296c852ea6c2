//! The `commands!` macro: from one declaration per command (see `table.rs`) it derives the
//! [`Opcode`](super::Opcode) and [`Command`](super::Command) enums, decoding with validation,
//! encoding, the classifiers ([`Class`](super::Class), [`Effect`](super::Effect), device
//! ranges), the [`Handler`](super::Handler) trait with one method per command, and
//! [`Command::dispatch`](super::Command::dispatch), the one place a command becomes a call.
//!
//! A declaration reads:
//!
//! ```text
//! /// What it does (becomes the docs of the opcode, the variant and the handler method).
//! Name = 0xNN => fn handler_method { field: Type, .. }
//!     flags { flag_field = FLAG_BIT }      // bits of the entry's flags, as bools
//!     check(staging) { checks?; }          // field checks when decoding (`staging`: its size)
//!     ranges [(ptr_field, len_field)]      // device ranges the host checks against the VM's
//!     class Class { .. };                  // ordering and scheduling (every field stated)
//!     effect Effect::..;                   // what it does to the VM's accounted resources
//! ```
//!
//! The body holds the fields in order (see [`Field`](super::Field)). `class` and `effect` are
//! expressions over the fields, so they may depend on them.

/// See the module documentation.
macro_rules! commands {
    // The `Command` enum: commands without fields become unit variants.
    (@enum [$($acc:tt)*]) => {
        /// A decoded, validated command. Produced by [`Command::decode`] from an entry already
        /// copied out of shared memory; every range it holds was checked against the staging
        /// size.
        #[derive(Debug, Clone, Copy, PartialEq)]
        pub enum Command { $($acc)* }
    };
    (@enum [$($acc:tt)*] [$(#[$m:meta])*] $name:ident [] $($rest:tt)*) => {
        commands!(@enum [$($acc)* $(#[$m])* $name,] $($rest)*);
    };
    (@enum [$($acc:tt)*] [$(#[$m:meta])*] $name:ident [$($f:tt)+] $($rest:tt)*) => {
        commands!(@enum [$($acc)* $(#[$m])* $name { $($f)+ },] $($rest)*);
    };

    ($(
        $(#[doc = $doc:literal])*
        $name:ident = $code:literal => fn $method:ident {
            $( $(#[doc = $fdoc:literal])* $field:ident : $ty:ty ),* $(,)?
        }
        flags { $( $(#[doc = $gdoc:literal])* $flag:ident = $bit:expr ),* $(,)? }
        check($st:ident) { $($check:tt)* }
        ranges [ $( ($rp:ident, $rl:ident) ),* $(,)? ]
        class $class:expr ;
        effect $effect:expr ;
    )*) => {
        /// Operation codes (the `opcode` of a submission entry).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr(u16)]
        pub enum Opcode {
            $( $(#[doc = $doc])* $name = $code, )*
        }

        $(
            const _: () = assert!(
                $crate::cmd::entry::body_len(
                    &[$((<$ty as $crate::cmd::Field>::SIZE, <$ty as $crate::cmd::Field>::ALIGN)),*]
                ) <= $crate::cmd::SQE_BODY,
                concat!("the fields of ", stringify!($name), " do not fit an entry's body")
            );
        )*

        impl Opcode {
            /// Every opcode, in declaration order.
            pub const ALL: &'static [Opcode] = &[$(Opcode::$name),*];

            /// Decodes a raw opcode.
            pub const fn from_raw(v: u16) -> Option<Self> {
                match v {
                    $( $code => Some(Opcode::$name), )*
                    _ => None,
                }
            }

            /// The command's name, as declared.
            pub const fn name(self) -> &'static str {
                match self {
                    $( Opcode::$name => stringify!($name), )*
                }
            }

            /// Bytes of the entry body the command's fields occupy (the rest is zero).
            pub const fn body_len(self) -> usize {
                match self {
                    $( Opcode::$name => $crate::cmd::entry::body_len(
                        &[$((<$ty as $crate::cmd::Field>::SIZE, <$ty as $crate::cmd::Field>::ALIGN)),*]
                    ), )*
                }
            }

            /// The entry flags the command accepts.
            pub const fn known_flags(self) -> u16 {
                match self {
                    $( Opcode::$name => 0 $(| $bit)*, )*
                }
            }
        }

        commands!(@enum [] $(
            [$(#[doc = $doc])*] $name [
                $( $(#[doc = $fdoc])* $field: $ty, )*
                $( $(#[doc = $gdoc])* $flag: bool, )*
            ]
        )*);

        /// One method per command, each with the command's fields; [`Command::dispatch`]
        /// calls the one a command names. A handler answers what it implements and leaves
        /// the rest to the default, [`Status::NotSupported`] (as a driver answers a call it
        /// does not implement).
        pub trait Handler {
            /// Whose command it is and where it runs (e.g. the VM and the stream).
            type Ctx: Copy;
            /// A command's answer.
            type Out;
            $(
                $(#[doc = $doc])*
                #[allow(clippy::too_many_arguments)]
                fn $method(
                    &mut self,
                    cx: Self::Ctx,
                    $( $field: $ty, )*
                    $( $flag: bool, )*
                ) -> Result<Self::Out, Status> {
                    let _ = (cx, $( $field, )* $( $flag, )*);
                    Err(Status::NotSupported)
                }
            )*
        }

        impl Command {
            /// The opcode of this command.
            pub const fn opcode(&self) -> Opcode {
                match self {
                    $( Command::$name { .. } => Opcode::$name, )*
                }
            }

            /// Calls the handler method this command names, with its fields: the one place
            /// where a command becomes work.
            pub fn dispatch<H: Handler + ?Sized>(
                &self,
                h: &mut H,
                cx: H::Ctx,
            ) -> Result<H::Out, Status> {
                match *self {
                    $( Command::$name { $($field,)* $($flag,)* } => {
                        h.$method(cx, $($field,)* $($flag,)*)
                    } )*
                }
            }

            /// How the command is ordered, scheduled and answered.
            #[allow(unused_variables)]
            pub fn class(&self) -> Class {
                match *self {
                    $( Command::$name { $($field,)* $($flag,)* } => $class, )*
                }
            }

            /// What the command does to the VM's accounted resources.
            #[allow(unused_variables)]
            pub fn effect(&self) -> Effect {
                match *self {
                    $( Command::$name { $($field,)* $($flag,)* } => $effect, )*
                }
            }

            /// The device ranges `(pointer, length)` the command touches, which must lie
            /// inside one allocation of the VM each.
            #[allow(unused_variables)]
            pub fn device_ranges(&self) -> DeviceRanges {
                match *self {
                    $( Command::$name { $($field,)* $($flag,)* } => {
                        DeviceRanges::new(&[$( ($rp, $rl) ),*])
                    } )*
                }
            }

            /// Validates an entry (already copied out of shared memory) against the size of
            /// the staging area.
            pub fn decode(sqe: &Sqe, staging_size: u64) -> Result<Command, Status> {
                let op = Opcode::from_raw(sqe.opcode).ok_or(Status::UnknownOpcode)?;
                if sqe.flags & !op.known_flags() != 0 {
                    return Err(Status::InvalidArgument);
                }
                #[allow(unused_mut, unused_variables)]
                let mut r = $crate::cmd::entry::BodyReader::new(&sqe.body);
                match op {
                    $( Opcode::$name => {
                        $( let $field: $ty = r.field::<$ty>(); )*
                        if !r.rest_is_zero() {
                            return Err(Status::InvalidArgument);
                        }
                        $( let $flag = sqe.flags & $bit != 0; )*
                        #[allow(unused_variables)]
                        let $st = staging_size;
                        $($check)*
                        Ok(Command::$name { $($field,)* $($flag,)* })
                    } )*
                }
            }

            /// Encodes this command into a submission entry.
            pub fn encode(&self, stream: u32, tag: u64) -> Sqe {
                let mut sqe = Sqe {
                    opcode: self.opcode() as u16,
                    stream,
                    tag,
                    ..Sqe::default()
                };
                match *self {
                    $( Command::$name { $($field,)* $($flag,)* } => {
                        #[allow(unused_mut, unused_variables)]
                        let mut w = $crate::cmd::entry::BodyWriter::new(&mut sqe.body);
                        $( w.field::<$ty>(&$field); )*
                        $( if $flag { sqe.flags |= $bit; } )*
                    } )*
                }
                sqe
            }
        }
    };
}
