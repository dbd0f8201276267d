//! nft_filter (work in progress)
