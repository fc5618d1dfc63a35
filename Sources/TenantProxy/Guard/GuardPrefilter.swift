/// A byte scan in front of StatementGuard and TransactionModeGuard. Both guards react only to
/// unquoted words from a short list (SET, RESET, set_config, DO, ALTER, LOAD, COPY, DISCARD,
/// LISTEN, PREPARE, EXECUTE, DECLARE ... HOLD, DEALLOCATE, TEMP / pg_temp, pg_advisory_*), to
/// quoted and U&"..." identifiers, and to backslashes (standard_conforming_strings). Text in
/// which none of these appears anywhere, in any case, inside or outside quotes and comments, is
/// allowed by both without anything to report, so it need not be lexed twice: the usual
/// SELECT / INSERT / UPDATE of an application passes with one pass over its bytes.
///
/// Conservative by construction: a word is looked for as a substring (so `offset` counts as
/// `set`), and any byte the scan cannot judge (`"`, `&`, `\`, non-ASCII) sends the text to the
/// guards. Tests hold every refusal and report of both guards' corpora, and random texts, to it.
enum GuardPrefilter {
    /// Lower-case words; every keyword either guard acts on contains one of them.
    static let words: [String] = [
        "set", "do", "alter", "load", "copy", "discard", "listen", "prepare", "execute", "declare",
        "hold", "deallocate", "temp", "advisory",
    ]

    /// Everything the scan looks up, in one buffer (one global to load, nothing retained):
    /// - `classOf` (256 bytes): what each byte value is to the scan: 0 passes (most bytes: one
    ///   load and a test), `special` sends the text to the guards, anything else is 1 + the
    ///   letter (a = 0) of a letter that begins one of the words, in either case;
    /// - `pairs` (26 x 26 bytes): for a first and a second letter, 1 + the number of the first
    ///   word that begins with them (0: none does);
    /// - `slots` (`slot` bytes per word): its length, 1 + the number of the next word with the
    ///   same first two letters (0: none), then its letters.
    private static let classOf = 0, pairsAt = 256, slotsAt = 256 + 26 * 26, slot = 16
    private static let special: UInt8 = 0xFF
    private static let table: [UInt8] = {
        let letters = words.map { Array($0.utf8) }
        var table = [UInt8](repeating: 0, count: slotsAt + letters.count * slot)
        for byte in 0x80...0xFF { table[classOf + byte] = special }
        for byte in [UInt8(ascii: "\""), UInt8(ascii: "&"), UInt8(ascii: "\\")] { table[classOf + Int(byte)] = special }
        // Backwards, so each pair's chain lists the words in their order.
        for (number, word) in letters.enumerated().reversed() {
            precondition(word.count >= 2 && word.count < slot && number < 254 && word.allSatisfy { $0 >= 0x61 && $0 <= 0x7A },
                         "GuardPrefilter.words: 2 to \(slot - 1) lower-case letters each, at most 254 words")
            let first = Int(word[0] - 0x61), second = Int(word[1] - 0x61)
            table[classOf + 0x61 + first] = UInt8(first + 1)
            table[classOf + 0x41 + first] = UInt8(first + 1)
            let at = slotsAt + number * slot
            table[at] = UInt8(word.count)
            table[at + 1] = table[pairsAt + first * 26 + second]
            table.replaceSubrange(at + 2 ..< at + 2 + word.count, with: word)
            table[pairsAt + first * 26 + second] = UInt8(number + 1)
        }
        return table
    }()

    /// Whether the guards must look at `sql` (false: both would allow it and report nothing).
    static func mayMatter(_ sql: UnsafeRawBufferPointer) -> Bool {
        guard let text = sql.baseAddress?.assumingMemoryBound(to: UInt8.self) else { return false }
        let count = sql.count
        return table.withUnsafeBufferPointer { table in
            var index = 0
            while index < count {
                let kind = table[classOf &+ Int(text[index])]
                if kind != 0 {
                    if kind == special { return true }
                    // `| 0x20` lower-cases ASCII letters and maps no other byte onto one.
                    let second = index &+ 1 < count ? (text[index &+ 1] | 0x20) &- 0x61 : 26
                    if second < 26 {
                        var number = table[pairsAt &+ Int(kind &- 1) &* 26 &+ Int(second)]
                        while number != 0 {
                            let at = slotsAt &+ Int(number &- 1) &* slot
                            let length = Int(table[at])
                            if length <= count &- index {
                                var offset = 2
                                while offset < length, text[index &+ offset] | 0x20 == table[at &+ 2 &+ offset] { offset &+= 1 }
                                if offset == length { return true }
                            }
                            number = table[at &+ 1]
                        }
                    }
                }
                index &+= 1
            }
            return false
        }
    }

    static func mayMatter(_ sql: String) -> Bool {
        var sql = sql
        return sql.withUTF8 { mayMatter(UnsafeRawBufferPointer($0)) }
    }
}
