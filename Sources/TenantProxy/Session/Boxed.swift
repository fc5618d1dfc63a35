/// A value kept out of line. A session holds its log-in state machines this way: inline, they
/// took about 400 bytes of every idle client's object long after log-in ended.
final class Boxed<Value> {
    var value: Value

    init(_ value: Value) {
        self.value = value
    }
}
