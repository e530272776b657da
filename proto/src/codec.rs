//! The gRPC codec of every Starling service: prost encoding with smaller per-call buffers.
//!
//! tonic allocates one encode buffer per call up front (8 KiB by default) and keeps it for the
//! life of a stream. A controller node holds one long `Watch` stream per machine agent, so at
//! ten thousand agents that buffer alone would be 80 MiB. Starting at 1 KiB costs nothing for
//! small messages; large ones (snapshot chunks, model descriptions) reserve what they need once.

use std::marker::PhantomData;

use tonic::codec::BufferSettings;
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// Initial (and growth step of the) per-call buffer.
pub const CALL_BUFFER_BYTES: usize = 1024;
/// How much a server stream batches before it yields to the transport (tonic's default).
pub const STREAM_YIELD_BYTES: usize = 32 * 1024;

fn settings() -> BufferSettings {
    BufferSettings::new(CALL_BUFFER_BYTES, STREAM_YIELD_BYTES)
}

/// `ProstCodec` with [`CALL_BUFFER_BYTES`] buffers; the generated services and clients use it.
#[derive(Debug)]
pub struct Codec<T, U> {
    _types: PhantomData<(T, U)>,
}

impl<T, U> Default for Codec<T, U> {
    fn default() -> Self {
        Codec {
            _types: PhantomData,
        }
    }
}

impl<T, U> tonic::codec::Codec for Codec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::raw_encoder(settings())
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstCodec::<T, U>::raw_decoder(settings())
    }
}
