//! Read planning: coalescing the tags of a poll group into the fewest read requests the
//! protocol allows. Pure; the poller executes the plan.
//!
//! Rule: tags are grouped by table and sorted by address; a tag joins the current request
//! when the unused addresses between them number at most `max_gap` and the request stays
//! within [`MAX_READ_REGISTERS`] registers (function codes 3, 4) or [`MAX_READ_BITS`] bits
//! (function codes 1, 2). Overlapping tags (e.g. bits of one register) share a request.

use super::config::{Area, MAX_READ_BITS, MAX_READ_REGISTERS, Tag};

/// One read request and the tags it serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadRequest {
    /// The table read.
    pub area: Area,
    /// 0-based protocol address of the first register or bit read.
    pub start: u16,
    /// Registers or bits read.
    pub count: u16,
    /// Indices into the group's tags.
    pub tags: Vec<usize>,
}

impl ReadRequest {
    /// Modbus function code of the request.
    pub fn function(&self) -> u8 {
        self.area.read_function()
    }
}

/// Plans the reads of one group's tags.
pub fn plan(tags: &[Tag], max_gap: u16) -> Vec<ReadRequest> {
    let mut order: Vec<usize> = (0..tags.len()).collect();
    order.sort_by_key(|&i| (tags[i].area, tags[i].address, tags[i].width()));
    let mut out: Vec<ReadRequest> = Vec::new();
    // End (exclusive) of the current request, as u32 to avoid overflow at 65535.
    let mut end: u32 = 0;
    for i in order {
        let tag = &tags[i];
        let (start, stop) = (
            u32::from(tag.address),
            u32::from(tag.address) + u32::from(tag.width()),
        );
        let limit = u32::from(if tag.area.is_bits() {
            MAX_READ_BITS
        } else {
            MAX_READ_REGISTERS
        });
        if let Some(cur) = out.last_mut()
            && cur.area == tag.area
            && start <= end + u32::from(max_gap)
            && stop.max(end) - u32::from(cur.start) <= limit
        {
            end = end.max(stop);
            // Fits: `end - start <= limit <= 2000`.
            cur.count = (end - u32::from(cur.start)) as u16;
            cur.tags.push(i);
            continue;
        }
        end = stop;
        out.push(ReadRequest {
            area: tag.area,
            start: tag.address,
            count: tag.width(),
            tags: vec![i],
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::config::{TagType, WordOrder};
    use super::*;

    fn tag(area: Area, address: u16, kind: TagType) -> Tag {
        Tag {
            name: format!("t{address}"),
            area,
            address,
            kind,
            length: 0,
            bit: 0,
            order: WordOrder::Abcd,
            scale: None,
            offset: None,
            unit: None,
            writable: false,
        }
    }
    use Area::*;
    use TagType::*;

    #[test]
    fn contiguous_registers_are_one_request() {
        let tags = vec![
            tag(HoldingRegister, 0, U16),
            tag(HoldingRegister, 1, F32),
            tag(HoldingRegister, 3, F64),
            tag(HoldingRegister, 7, I16),
        ];
        let p = plan(&tags, 0);
        assert_eq!(p.len(), 1);
        assert_eq!((p[0].start, p[0].count, p[0].function()), (0, 8, 3));
        assert_eq!(p[0].tags, vec![0, 1, 2, 3]);
    }

    #[test]
    fn gaps_split_unless_allowed() {
        let tags = vec![tag(HoldingRegister, 10, U32), tag(HoldingRegister, 15, U16)];
        // 3 unused registers (12, 13, 14) between them.
        assert_eq!(plan(&tags, 0).len(), 2);
        assert_eq!(plan(&tags, 2).len(), 2);
        let p = plan(&tags, 3);
        assert_eq!(p.len(), 1);
        assert_eq!((p[0].start, p[0].count), (10, 6));
    }

    #[test]
    fn areas_never_share_a_request_and_get_their_function_codes() {
        let tags = vec![
            tag(Coil, 0, Bool),
            tag(DiscreteInput, 0, Bool),
            tag(InputRegister, 0, U16),
            tag(HoldingRegister, 0, U16),
            tag(Coil, 1, Bool),
        ];
        let p = plan(&tags, 100);
        let fcs: Vec<u8> = p.iter().map(ReadRequest::function).collect();
        assert_eq!(fcs, vec![1, 2, 4, 3]);
        assert_eq!(p[0].tags, vec![0, 4]);
        assert_eq!(p[0].count, 2);
    }

    #[test]
    fn register_requests_stop_at_125() {
        // 300 contiguous u16 registers: 125 + 125 + 50.
        let tags: Vec<Tag> = (0..300).map(|a| tag(HoldingRegister, a, U16)).collect();
        let p = plan(&tags, 0);
        let counts: Vec<u16> = p.iter().map(|r| r.count).collect();
        assert_eq!(counts, vec![125, 125, 50]);
        // A 4-register value never straddles the limit: 124 + f64 would be 128.
        let mut tags: Vec<Tag> = (0..124).map(|a| tag(InputRegister, a, U16)).collect();
        tags.push(tag(InputRegister, 124, F64));
        let p = plan(&tags, 0);
        assert_eq!(p.iter().map(|r| r.count).collect::<Vec<_>>(), vec![124, 4]);
    }

    #[test]
    fn bit_requests_stop_at_2000() {
        let tags: Vec<Tag> = (0..4500).map(|a| tag(Coil, a, Bool)).collect();
        let p = plan(&tags, 0);
        assert_eq!(
            p.iter().map(|r| r.count).collect::<Vec<_>>(),
            vec![2000, 2000, 500]
        );
        // Sparse bits within 2000 with a large gap allowance: one request.
        let tags = vec![tag(DiscreteInput, 0, Bool), tag(DiscreteInput, 1999, Bool)];
        assert_eq!(plan(&tags, 2000).len(), 1);
        let tags = vec![tag(DiscreteInput, 0, Bool), tag(DiscreteInput, 2000, Bool)];
        assert_eq!(plan(&tags, 2000).len(), 2);
    }

    #[test]
    fn overlapping_bit_tags_share_their_register() {
        let mut a = tag(HoldingRegister, 5, Bit);
        a.bit = 0;
        let mut b = tag(HoldingRegister, 5, Bit);
        b.bit = 15;
        let p = plan(&[a, b, tag(HoldingRegister, 6, U16)], 0);
        assert_eq!(p.len(), 1);
        assert_eq!((p[0].start, p[0].count), (5, 2));
    }

    #[test]
    fn unsorted_input_and_the_top_address() {
        let tags = vec![
            tag(HoldingRegister, 65534, U16),
            tag(HoldingRegister, 0, U16),
            tag(HoldingRegister, 65535, U16),
        ];
        let p = plan(&tags, 0);
        assert_eq!(p.len(), 2);
        assert_eq!((p[1].start, p[1].count), (65534, 2));
        assert_eq!(p[1].tags, vec![0, 2]);
    }
}
