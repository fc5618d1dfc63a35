import PGWire

enum SCRAMVerifierFactory {
    static func make(password: String, iterations: Int) -> String {
        SCRAMVerifier.make(password: password, iterations: iterations).stringValue
    }
}
