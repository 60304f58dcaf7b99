// all-MiniLM-L6-v2 sentence embeddings with LiteRT (model.tflite, signature "seq_128",
// int32 inputs [1, 128]: litert-torch stores 64-bit model I/O as 32-bit). The bundle also has "seq_32" for texts of
// at most 32 tokens (inputs [1, 32]): use the smallest signature that holds the text, as the bundle's README.md does.
// pod 'TensorFlowLiteSwift'  (LiteRT's iOS library; not versioned with ai-edge-litert 2.3.0)
import Foundation
import TensorFlowLite

final class LiteRtEmbedder {
  static let signature = "seq_128"  // the full-length bucket
  private let interpreter: Interpreter
  private let runner: SignatureRunner

  init(threads: Int = 4) throws {
    let path = Bundle.main.path(forResource: "model", ofType: "tflite")!
    var options = Interpreter.Options()
    options.threadCount = threads
    interpreter = try Interpreter(modelPath: path, options: options)
    runner = try interpreter.signatureRunner(with: Self.signature)
  }

  func embed(inputIds: [Int32], attentionMask: [Int32], tokenTypeIds: [Int32]) throws -> [Float] {
    func data(_ v: [Int32]) -> Data { v.withUnsafeBufferPointer { Data(buffer: $0) } }
    try runner.invoke(with: [
      "input_ids": data(inputIds),
      "attention_mask": data(attentionMask),
      "token_type_ids": data(tokenTypeIds),
    ])
    let out = try runner.output(named: "sentence_embedding").data  // float32 [1, 384]
    return out.withUnsafeBytes { Array($0.bindMemory(to: Float.self)) }
  }
}
