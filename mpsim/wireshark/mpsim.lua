-- mpsim's Wireshark dissectors (Lua; tested with tshark 4.0).
--
--   convert     RFC 8803 Convert messages: the fixed header (section 6.1) and every TLV
--               (section 6.2): Info, Connect (port, address, TCP option entries), Extended TCP
--               Header, Supported TCP Extensions, Cookie, Error (every code by name). A message
--               is bounded by its Total Length; the application data after it is handed on.
--               Found on a TCP port (preference, default 1234, the port mpsim's converter uses)
--               and by a heuristic at the start of a stream (SYN payload or first data byte:
--               version 1, magic number 0x2263, Total Length > 0, a known first TLV type).
--               A message split across segments is reassembled (TCP desegmentation).
--   mpconvert   mpsim's private MP_CONVERT layout in an MPTCP option (kind 30, MP_EXPERIMENTAL
--               subtype 0xF, experiment ID 0xC0; docs/mp-convert.md), in the TCP header (a
--               postdissector reads the header's options) and in an EOL-delimited SYN payload.
--   synpayload  the EOL-delimited SYN-payload options of the 2016 proposal (docs/mp-convert.md 2):
--               TCP-option-formatted bytes, one EOL (0x00), then application data.
--
-- Load it once:   tshark -X lua_script:mpsim.lua -r capture.pcapng
-- or install it:  mpsim wireshark install   (copies it into the personal Lua plugin folder)
--
-- Wireshark 4.0's MPTCP dissector fails an assertion when a SYN carries an MPTCP option of a
-- subtype above MP_JOIN (any MP_EXPERIMENTAL, so every MP_CONVERT) and the SYN-ACK brings the
-- MP_CAPABLE key: docs/wireshark.md explains it. The preference "mpconvert.mptcp_option"
-- (off by default) makes this file dissect MPTCP options (kind 30) itself instead, which avoids
-- the assertion at the price of Wireshark's MPTCP analysis.
--
-- The numbers below come from mpsim/wire/convert.py (the project's source of truth); a test
-- (tests/wireshark) checks that they agree.

local CONVERT_DEFAULT_PORT = 1234
local CONVERT_VERSION = 1
local CONVERT_MAGIC = 0x2263
local MP_CONVERT_EXPERIMENT_ID = 0xC0

local TLV_TYPES = {
    [0x01] = "Info",
    [0x0A] = "Connect",
    [0x14] = "Extended TCP Header",
    [0x15] = "Supported TCP Extensions",
    [0x16] = "Cookie",
    [0x1E] = "Error",
}

local ERROR_CODES = {
    [0] = "Unsupported Version",
    [1] = "Malformed Message",
    [2] = "Unsupported Message",
    [3] = "Missing Cookie",
    [32] = "Not Authorized",
    [33] = "Unsupported TCP Option",
    [64] = "Resource Exceeded",
    [65] = "Network Failure",
    [96] = "Connection Reset",
    [97] = "Destination Unreachable",
}

local OPTION_KINDS = {
    [0] = "EOL", [1] = "NOP", [2] = "MSS", [3] = "Window Scale", [4] = "SACK Permitted", [5] = "SACK",
    [8] = "Timestamps", [28] = "User Timeout", [29] = "TCP-AO", [30] = "MPTCP", [34] = "TCP Fast Open",
    [253] = "Experimental 1", [254] = "Experimental 2",
}

local MPTCP_SUBTYPES = {
    [0x0] = "MP_CAPABLE", [0x1] = "MP_JOIN", [0x2] = "DSS", [0x3] = "ADD_ADDR", [0x4] = "REMOVE_ADDR",
    [0x5] = "MP_PRIO", [0x6] = "MP_FAIL", [0x7] = "MP_FASTCLOSE", [0x8] = "MP_TCPRST", [0xF] = "MP_EXPERIMENTAL",
}

-- --- fields of the TCP layer this file reads --------------------------------------------------

local f_tcp_stream = Field.new("tcp.stream")
local f_tcp_seq = Field.new("tcp.seq")
local f_tcp_syn = Field.new("tcp.flags.syn")
local f_tcp_len = Field.new("tcp.len")
local f_tcp_srcport = Field.new("tcp.srcport")
local f_tcp_hdr_len = Field.new("tcp.hdr_len")

-- The innermost TCP layer's value (the one whose payload is being dissected), or nil.
local function last_value(field)
    local all = { field() }
    local n = #all
    if n == 0 then return nil end
    return all[n].value
end

-- ================================================================================================
-- MP_CONVERT (mpsim's layout under MP_EXPERIMENTAL)
-- ================================================================================================

local mpconvert = Proto("mpconvert", "MP_CONVERT (mpsim's MP_EXPERIMENTAL layout)")
local mf = {
    kind = ProtoField.uint8("mpconvert.kind", "Kind", base.DEC),
    length = ProtoField.uint8("mpconvert.length", "Length", base.DEC),
    subtype = ProtoField.uint8("mpconvert.subtype", "MPTCP subtype", base.HEX, MPTCP_SUBTYPES, 0xF0),
    flags = ProtoField.uint8("mpconvert.flags", "Flags", base.HEX, nil, 0x0F),
    implicit = ProtoField.bool("mpconvert.flags.implicit", "I (implicit: MPTCP, do not revert to TCP)", 8, nil, 0x08),
    port_present = ProtoField.bool("mpconvert.flags.port", "P (a port follows the address)", 8, nil, 0x04),
    ipv6_flag = ProtoField.bool("mpconvert.flags.ipv6", "6 (the address is IPv6)", 8, nil, 0x02),
    reserved = ProtoField.bool("mpconvert.flags.reserved", "R (reserved, sent as 0)", 8, nil, 0x01),
    experiment_id = ProtoField.uint8("mpconvert.experiment_id", "Experiment ID", base.HEX),
    ipv4 = ProtoField.ipv4("mpconvert.address", "Destination address"),
    ipv6 = ProtoField.ipv6("mpconvert.address_v6", "Destination address (IPv6)"),
    port = ProtoField.uint16("mpconvert.port", "Destination port", base.DEC),
    mptcp_subtype = ProtoField.uint8("mpconvert.mptcp.subtype", "MPTCP subtype", base.HEX, MPTCP_SUBTYPES, 0xF0),
    mptcp_data = ProtoField.bytes("mpconvert.mptcp.data", "MPTCP option data"),
    mptcp_version = ProtoField.uint8("mpconvert.mptcp.version", "MP_CAPABLE version", base.DEC, nil, 0x0F),
    mptcp_flags = ProtoField.uint8("mpconvert.mptcp.flags", "Flags", base.HEX),
    mptcp_sender_key = ProtoField.uint64("mpconvert.mptcp.sender_key", "Sender's key", base.HEX),
    mptcp_receiver_key = ProtoField.uint64("mpconvert.mptcp.receiver_key", "Receiver's key", base.HEX),
    mptcp_data_ack = ProtoField.uint64("mpconvert.mptcp.data_ack", "Data ACK", base.DEC),
    mptcp_dsn = ProtoField.uint64("mpconvert.mptcp.dsn", "Data sequence number", base.DEC),
    mptcp_ssn = ProtoField.uint32("mpconvert.mptcp.ssn", "Subflow sequence number (relative to the ISN)", base.DEC),
    mptcp_dll = ProtoField.uint16("mpconvert.mptcp.data_level_length", "Data-level length", base.DEC),
    mptcp_checksum = ProtoField.uint16("mpconvert.mptcp.checksum", "Checksum", base.HEX),
}
mpconvert.fields = mf
local me = {
    bad_length = ProtoExpert.new("mpconvert.bad_length", "MP_CONVERT length does not match its flags",
        expert.group.MALFORMED, expert.severity.ERROR),
    reserved = ProtoExpert.new("mpconvert.reserved_set", "MP_CONVERT reserved flag R is set (a layout this dissector does not know)",
        expert.group.MALFORMED, expert.severity.ERROR),
}
mpconvert.experts = me
mpconvert.prefs.mptcp_option = Pref.bool("Dissect MPTCP options (kind 30) here", false,
    "Take TCP option kind 30 from Wireshark's MPTCP dissector, which in Wireshark 4.0 fails an assertion "
    .. "when a SYN carries MP_EXPERIMENTAL (every MP_CONVERT) before the SYN-ACK's MP_CAPABLE key. "
    .. "Avoids the assertion; loses Wireshark's MPTCP analysis.")

-- Whether the option at tvb(offset, length) is an MP_CONVERT (kind 30, subtype 0xF, ID 0xC0).
local function is_mp_convert(tvb, offset, length)
    return length >= 4 and tvb(offset, 1):uint() == 30 and bit.rshift(tvb(offset + 2, 1):uint(), 4) == 0xF
        and tvb(offset + 3, 1):uint() == MP_CONVERT_EXPERIMENT_ID
end

-- Adds the MP_CONVERT option at tvb(offset, length) to tree; returns a one-line summary.
local function add_mp_convert(tvb, offset, length, tree, pinfo)
    local item = tree:add(mpconvert, tvb(offset, length))
    item:add(mf.kind, tvb(offset, 1))
    item:add(mf.length, tvb(offset + 1, 1))
    item:add(mf.subtype, tvb(offset + 2, 1))
    local flags_item = item:add(mf.flags, tvb(offset + 2, 1))
    flags_item:add(mf.implicit, tvb(offset + 2, 1))
    flags_item:add(mf.port_present, tvb(offset + 2, 1))
    flags_item:add(mf.ipv6_flag, tvb(offset + 2, 1))
    local reserved_item = flags_item:add(mf.reserved, tvb(offset + 2, 1))
    item:add(mf.experiment_id, tvb(offset + 3, 1))
    local flags = bit.band(tvb(offset + 2, 1):uint(), 0x0F)
    local port_bytes = bit.band(flags, 0x04) ~= 0 and 2 or 0
    local address_bytes = length - 4 - port_bytes
    local summary = "MP_CONVERT"
    if bit.band(flags, 0x01) ~= 0 then
        reserved_item:add_proto_expert_info(me.reserved)
        return summary .. " (reserved flag set)"
    end
    -- The only valid combinations (docs/mp-convert.md): 6 -> 16 address bytes; P without 6 -> 4;
    -- neither -> 0 or 4.
    local valid
    if bit.band(flags, 0x02) ~= 0 then
        valid = address_bytes == 16
    elseif port_bytes > 0 then
        valid = address_bytes == 4
    else
        valid = address_bytes == 0 or address_bytes == 4
    end
    if not valid then
        item:add_proto_expert_info(me.bad_length, string.format(
            "MP_CONVERT length %d with flags 0x%x: no valid layout", length, flags))
        return summary .. " (bad length)"
    end
    if address_bytes == 4 then
        item:add(mf.ipv4, tvb(offset + 4, 4))
        summary = summary .. " " .. tostring(tvb(offset + 4, 4):ipv4())
    elseif address_bytes == 16 then
        item:add(mf.ipv6, tvb(offset + 4, 16))
        summary = summary .. " [" .. tostring(tvb(offset + 4, 16):ipv6()) .. "]"
    else
        summary = summary .. " (destination of the IP header)"
    end
    if port_bytes > 0 then
        item:add(mf.port, tvb(offset + 4 + address_bytes, 2))
        summary = summary .. ":" .. tvb(offset + 4 + address_bytes, 2):uint()
    end
    if bit.band(flags, 0x08) ~= 0 then summary = summary .. " implicit" end
    item:append_text(": " .. summary:sub(12))
    return summary
end

-- The TCP header's options: a postdissector, so that it works beside Wireshark's own MPTCP
-- dissector (which shows the option as "Unknown (15)").
function mpconvert.dissector(tvb, pinfo, tree)
    local ports = { f_tcp_srcport() }
    local header_lengths = { f_tcp_hdr_len() }
    if #ports == 0 or #header_lengths == 0 then return end
    local start = ports[1].offset
    local header_bytes = header_lengths[1].value
    -- The header must be in this frame's bytes (not in a reassembled or decompressed buffer).
    if start + header_bytes > tvb:len() or tvb(start, 2):uint() ~= ports[1].value then return end
    local offset, stop = start + 20, start + header_bytes
    local summaries = {}
    while offset < stop do
        local kind = tvb(offset, 1):uint()
        if kind == 0 then break end
        if kind == 1 then
            offset = offset + 1
        else
            if offset + 1 >= stop then break end
            local length = tvb(offset + 1, 1):uint()
            if length < 2 or offset + length > stop then break end
            if is_mp_convert(tvb, offset, length) then
                summaries[#summaries + 1] = add_mp_convert(tvb, offset, length, tree, pinfo)
            end
            offset = offset + length
        end
    end
    if #summaries > 0 then
        pinfo.cols.info:append(" " .. table.concat(summaries, " "))
    end
end
register_postdissector(mpconvert)

-- Optional: MPTCP options (kind 30) dissected here instead of by Wireshark (see the preference).
local mptcp_option = Proto("mpsim_mptcp", "MPTCP option (mpsim, instead of Wireshark's MPTCP dissector)")
mptcp_option.fields = {}
function mptcp_option.dissector(tvb, pinfo, tree)
    local length = tvb:len()
    local item = tree:add(mptcp_option, tvb(0, length))
    if length < 3 then return length end
    local subtype = bit.rshift(tvb(2, 1):uint(), 4)
    item:add(mf.mptcp_subtype, tvb(2, 1))
    item:append_text(": " .. (MPTCP_SUBTYPES[subtype] or string.format("subtype %d", subtype)))
    if subtype == 0x0 and length >= 4 then
        -- MP_CAPABLE (RFC 8684 3.1): version, flags, then by length the keys and data-level length.
        item:add(mf.mptcp_version, tvb(2, 1))
        item:add(mf.mptcp_flags, tvb(3, 1))
        if length >= 12 then item:add(mf.mptcp_sender_key, tvb(4, 8)) end
        if length >= 20 then item:add(mf.mptcp_receiver_key, tvb(12, 8)) end
        if length >= 22 then item:add(mf.mptcp_dll, tvb(20, 2)) end
        if length >= 24 then item:add(mf.mptcp_checksum, tvb(22, 2)) end
    elseif subtype == 0x2 and length >= 4 then
        -- DSS (RFC 8684 3.3): flags F m M a A, then the fields they announce.
        local flags = tvb(3, 1):uint()
        item:add(mf.mptcp_flags, tvb(3, 1))
        local offset = 4
        if bit.band(flags, 0x01) ~= 0 then
            local bytes = bit.band(flags, 0x02) ~= 0 and 8 or 4
            if offset + bytes <= length then item:add(mf.mptcp_data_ack, tvb(offset, bytes)) end
            offset = offset + bytes
        end
        if bit.band(flags, 0x04) ~= 0 then
            local bytes = bit.band(flags, 0x08) ~= 0 and 8 or 4
            if offset + bytes + 6 <= length then
                item:add(mf.mptcp_dsn, tvb(offset, bytes))
                item:add(mf.mptcp_ssn, tvb(offset + bytes, 4))
                item:add(mf.mptcp_dll, tvb(offset + bytes + 4, 2))
                if offset + bytes + 8 <= length then item:add(mf.mptcp_checksum, tvb(offset + bytes + 6, 2)) end
            end
        end
    elseif length > 3 then
        item:add(mf.mptcp_data, tvb(3, length - 3))
    end
    if is_mp_convert(tvb, 0, length) then item:append_text(" (MP_CONVERT, see below)") end
    return length
end

local saved_mptcp_option = nil
local function apply_mptcp_option_pref()
    local options = DissectorTable.get("tcp.option")
    if mpconvert.prefs.mptcp_option then
        if saved_mptcp_option == nil then saved_mptcp_option = options:get_dissector(30) end
        options:add(30, mptcp_option)
    elseif saved_mptcp_option ~= nil then
        options:add(30, saved_mptcp_option)
    end
end
function mpconvert.prefs_changed()
    apply_mptcp_option_pref()
end

-- ================================================================================================
-- Generic TCP option lists (Connect entries, Extended TCP Header, SYN payload)
-- ================================================================================================

local convert = Proto("convert", "TCP Convert Protocol (RFC 8803)")
local synpayload = Proto("synpayload", "SYN-payload options, EOL-delimited (mpsim, 2016 proposal)")

-- A one-line description of option kind/length/value at tvb(offset, length) (length >= 2).
local function option_summary(tvb, offset, kind, length)
    local name = OPTION_KINDS[kind] or string.format("kind %d", kind)
    if kind == 2 and length == 4 then return "MSS " .. tvb(offset + 2, 2):uint() end
    if kind == 3 and length == 3 then return "WS " .. tvb(offset + 2, 1):uint() end
    if kind == 8 and length == 10 then
        return string.format("TS val %u ecr %u", tvb(offset + 2, 4):uint(), tvb(offset + 6, 4):uint())
    end
    if kind == 30 and length >= 3 then
        local subtype = bit.rshift(tvb(offset + 2, 1):uint(), 4)
        return "MPTCP " .. (MPTCP_SUBTYPES[subtype] or string.format("subtype %d", subtype))
    end
    if kind == 34 then return length == 2 and "TFO cookie request" or "TFO cookie" end
    return name
end

-- Adds the kind/length/value option list at tvb(offset, stop - offset); fields from `fields`
-- (option, kind, length, value). stop_at_eol: an EOL ends the list (padding may follow).
-- Returns the offset after the list (at the EOL if one was found), whether an EOL was found,
-- and the option summaries.
local function add_option_list(tvb, offset, stop, tree, fields, pinfo)
    local summaries = {}
    while offset < stop do
        local kind = tvb(offset, 1):uint()
        if kind == 0 then return offset, true, summaries end
        if kind == 1 then
            local item = tree:add(fields.option, tvb(offset, 1))
            item:set_text("NOP")
            item:add(fields.kind, tvb(offset, 1))
            offset = offset + 1
        else
            if offset + 1 >= stop then
                local item = tree:add(fields.option, tvb(offset, stop - offset))
                item:add(fields.kind, tvb(offset, 1))
                item:add_proto_expert_info(fields.expert, string.format("option kind %d has no length byte", kind))
                return stop, false, summaries
            end
            local length = tvb(offset + 1, 1):uint()
            if length < 2 or offset + length > stop then
                local item = tree:add(fields.option, tvb(offset, stop - offset))
                item:add(fields.kind, tvb(offset, 1))
                item:add(fields.length, tvb(offset + 1, 1))
                item:add_proto_expert_info(fields.expert, string.format(
                    "option kind %d length %d: needs 2..%d", kind, length, stop - offset))
                return stop, false, summaries
            end
            local item = tree:add(fields.option, tvb(offset, length))
            local summary = option_summary(tvb, offset, kind, length)
            item:set_text(summary)
            item:add(fields.kind, tvb(offset, 1))
            item:add(fields.length, tvb(offset + 1, 1))
            if length > 2 then item:add(fields.value, tvb(offset + 2, length - 2)) end
            if is_mp_convert(tvb, offset, length) then
                summary = add_mp_convert(tvb, offset, length, item, pinfo)
            end
            summaries[#summaries + 1] = summary
            offset = offset + length
        end
    end
    return offset, false, summaries
end

-- ================================================================================================
-- RFC 8803 Convert
-- ================================================================================================

local cf = {
    version = ProtoField.uint8("convert.version", "Version", base.DEC),
    total_length = ProtoField.uint8("convert.total_length", "Total Length (32-bit words)", base.DEC),
    message_bytes = ProtoField.uint16("convert.message_bytes", "Message length (bytes)", base.DEC),
    magic = ProtoField.uint16("convert.magic", "Magic Number", base.HEX),
    tlv = ProtoField.none("convert.tlv", "TLV"),
    tlv_type = ProtoField.uint8("convert.tlv.type", "Type", base.DEC, TLV_TYPES),
    tlv_length = ProtoField.uint8("convert.tlv.length", "Length (32-bit words)", base.DEC),
    tlv_reserved = ProtoField.uint16("convert.tlv.reserved", "Unassigned / Zero", base.HEX),
    tlv_padding = ProtoField.bytes("convert.tlv.padding", "Zero padding"),
    info = ProtoField.none("convert.info", "Info request"),
    connect_port = ProtoField.uint16("convert.connect.port", "Remote Peer Port", base.DEC),
    connect_address = ProtoField.ipv6("convert.connect.address", "Remote Peer IP Address"),
    connect_ipv4 = ProtoField.ipv4("convert.connect.ipv4", "Remote Peer IPv4 Address (IPv4-mapped)"),
    connect_option = ProtoField.none("convert.connect.option", "TCP option entry"),
    connect_option_kind = ProtoField.uint8("convert.connect.option.kind", "Kind", base.DEC, OPTION_KINDS),
    connect_option_length = ProtoField.uint8("convert.connect.option.length", "Length", base.DEC),
    connect_option_value = ProtoField.bytes("convert.connect.option.value", "Value"),
    ext_option = ProtoField.none("convert.ext_tcp_header.option", "TCP option"),
    ext_option_kind = ProtoField.uint8("convert.ext_tcp_header.option.kind", "Kind", base.DEC, OPTION_KINDS),
    ext_option_length = ProtoField.uint8("convert.ext_tcp_header.option.length", "Length", base.DEC),
    ext_option_value = ProtoField.bytes("convert.ext_tcp_header.option.value", "Value"),
    supported_kind = ProtoField.uint8("convert.supported.kind", "Supported TCP option kind", base.DEC, OPTION_KINDS),
    cookie = ProtoField.bytes("convert.cookie", "Cookie"),
    error_code = ProtoField.uint8("convert.error.code", "Error Code", base.DEC, ERROR_CODES),
    error_value = ProtoField.uint8("convert.error.value", "Value", base.DEC),
    error_version = ProtoField.uint8("convert.error.supported_version", "Supported version", base.DEC),
    error_option_kind = ProtoField.uint8("convert.error.unsupported_kind", "Unsupported TCP option kind", base.DEC,
        OPTION_KINDS),
    error_retry_s = ProtoField.uint8("convert.error.retry_delay", "Retry after (s, 0: default of at least 30 s)",
        base.DEC),
    error_icmp_code = ProtoField.uint8("convert.error.icmp_code", "ICMP Code received", base.DEC),
    error_echo = ProtoField.bytes("convert.error.echo", "Offending message (echo)"),
    error_cookie = ProtoField.bytes("convert.error.cookie", "Cookie to use"),
    error_data = ProtoField.bytes("convert.error.data", "Further bytes"),
    unknown_value = ProtoField.bytes("convert.unknown.value", "Value of an unknown TLV"),
}
convert.fields = cf
local ce = {
    truncated = ProtoExpert.new("convert.truncated", "Convert message cut short", expert.group.MALFORMED,
        expert.severity.ERROR),
    zero_length = ProtoExpert.new("convert.total_length.zero", "Convert Total Length 0 (RFC 8803 6.1: reset)",
        expert.group.MALFORMED, expert.severity.ERROR),
    version = ProtoExpert.new("convert.version.unsupported", "Convert version other than 1 (answered by Error 0)",
        expert.group.PROTOCOL, expert.severity.WARN),
    bad_tlv_length = ProtoExpert.new("convert.tlv.bad_length", "TLV Length 0, wrong for its type, or past the Total Length",
        expert.group.MALFORMED, expert.severity.ERROR),
    reserved_type = ProtoExpert.new("convert.tlv.reserved_type", "TLV type 0 is reserved (RFC 8803 6.2.2)",
        expert.group.MALFORMED, expert.severity.ERROR),
    duplicate = ProtoExpert.new("convert.tlv.duplicate", "TLV type repeated in one message (RFC 8803 6.2.1)",
        expert.group.MALFORMED, expert.severity.ERROR),
    unknown = ProtoExpert.new("convert.tlv.unknown", "TLV type RFC 8803 does not define",
        expert.group.UNDECODED, expert.severity.WARN),
    option = ProtoExpert.new("convert.option.bad", "Malformed TCP option in a Convert TLV",
        expert.group.MALFORMED, expert.severity.ERROR),
    error_tlv = ProtoExpert.new("convert.error.reported", "The converter reports an error",
        expert.group.RESPONSE_CODE, expert.severity.NOTE),
}
convert.experts = ce
convert.prefs.port = Pref.uint("TCP port", CONVERT_DEFAULT_PORT,
    "The converter's TCP port (RFC 8803 assigns none; 1234 is libconvert's and mpsim's default). 0: heuristic only.")
convert.prefs.app_dissector = Pref.string("Application data dissector", "data",
    "The dissector the application data after a Convert message is handed to (e.g. http).")

local connect_fields = { option = cf.connect_option, kind = cf.connect_option_kind, length = cf.connect_option_length,
                         value = cf.connect_option_value, expert = ce.option }
local ext_fields = { option = cf.ext_option, kind = cf.ext_option_kind, length = cf.ext_option_length,
                     value = cf.ext_option_value, expert = ce.option }

-- Zero padding from offset to stop, if any.
local function add_padding(tvb, offset, stop, tree)
    if stop > offset then tree:add(cf.tlv_padding, tvb(offset, stop - offset)) end
end

-- Each TLV decoder gets the TLV's offset and byte length (Length * 4 >= 4) and returns a summary.
local tlv_decoders = {}

tlv_decoders[0x01] = function(tvb, offset, bytes, tree)
    tree:add(cf.info, tvb(offset, bytes))
    tree:add(cf.tlv_reserved, tvb(offset + 2, 2))
    return "Info"
end

tlv_decoders[0x0A] = function(tvb, offset, bytes, tree, pinfo)
    tree:add(cf.connect_port, tvb(offset + 2, 2))
    tree:add(cf.connect_address, tvb(offset + 4, 16))
    local port = tvb(offset + 2, 2):uint()
    local address
    if tvb(offset + 4, 12):bytes():tohex() == "00000000000000000000FFFF" then
        tree:add(cf.connect_ipv4, tvb(offset + 16, 4))
        address = tostring(tvb(offset + 16, 4):ipv4())
    else
        address = "[" .. tostring(tvb(offset + 4, 16):ipv6()) .. "]"
    end
    local summary = "Connect " .. address .. ":" .. port
    if bytes > 20 then
        local after, _, summaries = add_option_list(tvb, offset + 20, offset + bytes, tree, connect_fields, pinfo)
        add_padding(tvb, after, offset + bytes, tree)
        if #summaries > 0 then summary = summary .. " (" .. table.concat(summaries, ", ") .. ")" end
    end
    return summary
end

tlv_decoders[0x14] = function(tvb, offset, bytes, tree, pinfo)
    tree:add(cf.tlv_reserved, tvb(offset + 2, 2))
    local after, _, summaries = add_option_list(tvb, offset + 4, offset + bytes, tree, ext_fields, pinfo)
    add_padding(tvb, after, offset + bytes, tree)
    return "Extended TCP Header (" .. table.concat(summaries, ", ") .. ")"
end

tlv_decoders[0x15] = function(tvb, offset, bytes, tree)
    tree:add(cf.tlv_reserved, tvb(offset + 2, 2))
    local names = {}
    local position = offset + 4
    while position < offset + bytes and tvb(position, 1):uint() ~= 0 do
        tree:add(cf.supported_kind, tvb(position, 1))
        local kind = tvb(position, 1):uint()
        names[#names + 1] = OPTION_KINDS[kind] or tostring(kind)
        position = position + 1
    end
    add_padding(tvb, position, offset + bytes, tree)
    return "Supported TCP Extensions (" .. table.concat(names, ", ") .. ")"
end

tlv_decoders[0x16] = function(tvb, offset, bytes, tree)
    tree:add(cf.tlv_reserved, tvb(offset + 2, 2))
    if bytes > 4 then tree:add(cf.cookie, tvb(offset + 4, bytes - 4)) end
    return "Cookie"
end

-- A zero-terminated list of bytes from `offset` (the Value byte) to `stop`: codes 0 and 33.
local function add_byte_list(tvb, offset, stop, tree, field)
    local position = offset
    while position < stop and tvb(position, 1):uint() ~= 0 do
        tree:add(field, tvb(position, 1))
        position = position + 1
    end
    add_padding(tvb, position, stop, tree)
end

tlv_decoders[0x1E] = function(tvb, offset, bytes, tree, pinfo)
    local code = tvb(offset + 2, 1):uint()
    local code_item = tree:add(cf.error_code, tvb(offset + 2, 1))
    local name = ERROR_CODES[code] or string.format("code %d", code)
    code_item:add_proto_expert_info(ce.error_tlv, "Convert Error: " .. name)
    local stop = offset + bytes
    if code == 0 then
        add_byte_list(tvb, offset + 3, stop, tree, cf.error_version)
    elseif code == 33 then
        add_byte_list(tvb, offset + 3, stop, tree, cf.error_option_kind)
    else
        if code == 64 or code == 65 then
            tree:add(cf.error_retry_s, tvb(offset + 3, 1))
        elseif code == 97 then
            tree:add(cf.error_icmp_code, tvb(offset + 3, 1))
        else
            tree:add(cf.error_value, tvb(offset + 3, 1))
        end
        if bytes > 4 then
            local field = (code == 1 or code == 2) and cf.error_echo or code == 3 and cf.error_cookie or cf.error_data
            tree:add(field, tvb(offset + 4, bytes - 4))
        end
    end
    return "Error " .. name
end

-- Length rules the RFC fixes (6.2.3, 6.2.5): Info exactly 1 word, Connect at least 5.
local function tlv_length_ok(tlv_type, words)
    if tlv_type == 0x01 then return words == 1 end
    if tlv_type == 0x0A then return words >= 5 end
    return words >= 1
end

-- Dissects the Convert message at tvb(0, bytes) (bytes = Total Length * 4, all present).
local function dissect_tlvs(tvb, bytes, tree, pinfo)
    local offset = 4
    local seen = {}
    local summaries = {}
    while offset < bytes do
        local tlv_type = tvb(offset, 1):uint()
        local words = tvb(offset + 1, 1):uint()
        local tlv_bytes = words * 4
        local item = tree:add(cf.tlv, tvb(offset, math.max(4, math.min(tlv_bytes, bytes - offset))))
        local name = TLV_TYPES[tlv_type] or string.format("Unknown (%d)", tlv_type)
        item:set_text("TLV: " .. name)
        item:add(cf.tlv_type, tvb(offset, 1))
        local length_item = item:add(cf.tlv_length, tvb(offset + 1, 1))
        length_item:append_text(string.format(" (%d bytes)", tlv_bytes))
        if words == 0 or offset + tlv_bytes > bytes or not tlv_length_ok(tlv_type, words) then
            length_item:add_proto_expert_info(ce.bad_tlv_length)
            summaries[#summaries + 1] = name .. " (bad length)"
            break
        end
        if tlv_type == 0 then
            item:add_proto_expert_info(ce.reserved_type)
        elseif seen[tlv_type] then
            item:add_proto_expert_info(ce.duplicate)
        end
        seen[tlv_type] = true
        local decoder = tlv_decoders[tlv_type]
        local summary
        if decoder ~= nil then
            summary = decoder(tvb, offset, tlv_bytes, item, pinfo)
        else
            item:add(cf.unknown_value, tvb(offset + 2, tlv_bytes - 2))
            if tlv_type ~= 0 then item:add_proto_expert_info(ce.unknown) end
            summary = name
        end
        item:set_text("TLV: " .. summary)
        summaries[#summaries + 1] = summary
        offset = offset + tlv_bytes
    end
    return summaries
end

-- Per-direction state for messages reassembled across segments (first pass only) and the
-- frames in which a reassembled message was dissected (for later passes).
local pending_start = {}
local reassembled_frames = {}

function convert.init()
    pending_start = {}
    reassembled_frames = {}
    apply_mptcp_option_pref()
end

local function direction_key(pinfo)
    return tostring(last_value(f_tcp_stream)) .. ":" .. tostring(pinfo.src_port)
end

-- Whether tvb begins at the start of its direction's byte stream: a SYN's payload, the first
-- data byte (relative sequence number 1), or a message reassembled from there. TCP hands a
-- reassembled message to the dissector before the rest of the segment that completed it, so
-- on the first pass the first call after a desegmentation request is the reassembled message;
-- later passes look the frame up.
local function at_stream_start(tvb, pinfo)
    if last_value(f_tcp_syn) then return true, true end
    if last_value(f_tcp_seq) == 1 then return true, false end
    if pinfo.visited then return reassembled_frames[pinfo.number] == tvb:len(), false end
    if pending_start[direction_key(pinfo)] then
        reassembled_frames[pinfo.number] = tvb:len()
        return true, false
    end
    return false, false
end

local function hand_on(tvb, pinfo, tree)
    if tvb:len() == 0 then return end
    local found, dissector = pcall(Dissector.get, convert.prefs.app_dissector)
    if not found or dissector == nil then dissector = Dissector.get("data") end
    dissector:call(tvb, pinfo, tree)
end

-- The first bytes look like a Convert header (or a prefix of one).
local function looks_like_header(tvb)
    local n = tvb:len()
    if n >= 4 then return tvb(2, 2):uint() == CONVERT_MAGIC end
    if n >= 3 and tvb(2, 1):uint() ~= bit.rshift(CONVERT_MAGIC, 8) then return false end
    return n >= 1 and tvb(0, 1):uint() == CONVERT_VERSION
end

local dissect_syn_payload

-- The Convert message at the start of tvb, then the application data; 0 when tvb holds none.
local function dissect_convert(tvb, pinfo, tree, syn)
    local n = tvb:len()
    local key = direction_key(pinfo)
    if n < 4 or (tvb(2, 2):uint() == CONVERT_MAGIC and tvb(1, 1):uint() * 4 > n) then
        local needed = n < 4 and 4 or tvb(1, 1):uint() * 4
        if not syn and pinfo.can_desegment > 0 then
            if not pinfo.visited then pending_start[key] = true end
            pinfo.desegment_offset = 0
            -- Without the Total Length, ask for the next segment whole (then read the length).
            pinfo.desegment_len = n < 4 and DESEGMENT_ONE_MORE_SEGMENT or needed - n
            return n
        end
        local item = tree:add(convert, tvb(0, n))
        item:add_proto_expert_info(ce.truncated, string.format(
            "Convert message needs %d bytes, %d in this segment", needed, n))
        return n
    end
    pending_start[key] = nil
    pinfo.cols.protocol = "Convert"
    local total_words = tvb(1, 1):uint()
    local bytes = total_words * 4
    local root = tree:add(convert, tvb(0, math.max(4, bytes)))
    local version_item = root:add(cf.version, tvb(0, 1))
    local length_item = root:add(cf.total_length, tvb(1, 1))
    root:add(cf.message_bytes, tvb(1, 1), bytes):set_generated()
    root:add(cf.magic, tvb(2, 2))
    if total_words == 0 then
        length_item:add_proto_expert_info(ce.zero_length)
        pinfo.cols.info:append(" [Convert: Total Length 0]")
        return n
    end
    local summaries
    if tvb(0, 1):uint() ~= CONVERT_VERSION then
        version_item:add_proto_expert_info(ce.version)
        summaries = { "version " .. tvb(0, 1):uint() }
        if bytes > 4 then root:add(cf.unknown_value, tvb(4, bytes - 4)) end
    else
        summaries = dissect_tlvs(tvb, bytes, root, pinfo)
        if #summaries == 0 then summaries = { "header only" } end
    end
    root:append_text(", " .. table.concat(summaries, ", "))
    pinfo.cols.info:append(" [Convert: " .. table.concat(summaries, ", ") .. "]")
    if n > bytes then hand_on(tvb(bytes):tvb(), pinfo, tree) end
    return n
end

function convert.dissector(tvb, pinfo, tree)
    if tvb:len() == 0 then return 0 end
    local start, syn = at_stream_start(tvb, pinfo)
    if not start then return 0 end
    if looks_like_header(tvb) then return dissect_convert(tvb, pinfo, tree, syn) end
    -- mpsim's older schemes use the converter's port too: EOL-delimited SYN payloads.
    if syn and dissect_syn_payload(tvb, pinfo, tree, true) then return tvb:len() end
    return 0
end

local function convert_heuristic(tvb, pinfo, tree)
    local n = tvb:len()
    if n < 4 or tvb(0, 1):uint() ~= CONVERT_VERSION or tvb(2, 2):uint() ~= CONVERT_MAGIC then return false end
    if tvb(1, 1):uint() == 0 then return false end
    if n >= 5 and tvb(1, 1):uint() > 1 and TLV_TYPES[tvb(4, 1):uint()] == nil then return false end
    local start, syn = at_stream_start(tvb, pinfo)
    if not start then return false end
    pinfo.conversation = convert
    dissect_convert(tvb, pinfo, tree, syn)
    return true
end

-- ================================================================================================
-- EOL-delimited SYN-payload options
-- ================================================================================================

local sf = {
    option = ProtoField.none("synpayload.option", "Option"),
    kind = ProtoField.uint8("synpayload.option.kind", "Kind", base.DEC, OPTION_KINDS),
    length = ProtoField.uint8("synpayload.option.length", "Length", base.DEC),
    value = ProtoField.bytes("synpayload.option.value", "Value"),
    eol = ProtoField.uint8("synpayload.eol", "EOL (end of the signalling)", base.HEX),
    data_bytes = ProtoField.uint32("synpayload.data_bytes", "Application data after the EOL (bytes)", base.DEC),
}
synpayload.fields = sf
local se = {
    option = ProtoExpert.new("synpayload.option.bad", "Malformed option in the SYN payload",
        expert.group.MALFORMED, expert.severity.ERROR),
}
synpayload.experts = se
local syn_fields = { option = sf.option, kind = sf.kind, length = sf.length, value = sf.value, expert = se.option }

-- Options every SYN-payload signal may hold (the heuristic refuses other first bytes).
local SYN_PAYLOAD_KINDS = { [1] = true, [2] = true, [3] = true, [4] = true, [8] = true, [28] = true, [29] = true,
                            [30] = true, [34] = true, [253] = true, [254] = true }

-- Whether tvb is options then an EOL: every kind known, lengths in bounds, at least one option.
local function is_syn_payload(tvb)
    local n, offset, options = tvb:len(), 0, 0
    while offset < n do
        local kind = tvb(offset, 1):uint()
        if kind == 0 then return options > 0 end
        if not SYN_PAYLOAD_KINDS[kind] then return false end
        if kind == 1 then
            offset = offset + 1
        else
            if offset + 1 >= n then return false end
            local length = tvb(offset + 1, 1):uint()
            if length < 2 or offset + length > n then return false end
            offset = offset + length
            options = options + 1
        end
    end
    return false
end

dissect_syn_payload = function(tvb, pinfo, tree, syn)
    if not syn or not is_syn_payload(tvb) then return false end
    pinfo.cols.protocol = "SYN options"
    local root = tree:add(synpayload, tvb(0, tvb:len()))
    local eol, _, summaries = add_option_list(tvb, 0, tvb:len(), root, syn_fields, pinfo)
    root:add(sf.eol, tvb(eol, 1))
    local data_bytes = tvb:len() - eol - 1
    root:add(sf.data_bytes, data_bytes):set_generated()
    root:append_text(": " .. table.concat(summaries, ", "))
    pinfo.cols.info:append(" [SYN options: " .. table.concat(summaries, ", ") .. "]")
    if data_bytes > 0 then hand_on(tvb(eol + 1):tvb(), pinfo, tree) end
    return true
end

local function syn_payload_heuristic(tvb, pinfo, tree)
    if not last_value(f_tcp_syn) then return false end
    return dissect_syn_payload(tvb, pinfo, tree, true)
end

-- ================================================================================================
-- Registration
-- ================================================================================================

local registered_port = 0
local function apply_port_pref()
    local ports = DissectorTable.get("tcp.port")
    if registered_port ~= 0 then ports:remove(registered_port, convert) end
    registered_port = convert.prefs.port
    if registered_port ~= 0 then ports:add(registered_port, convert) end
end
function convert.prefs_changed()
    apply_port_pref()
end
apply_port_pref()
convert:register_heuristic("tcp", convert_heuristic)
synpayload:register_heuristic("tcp", syn_payload_heuristic)
